//! [`KeyedLockLayer`]: the middleware's configuration. Cheap to clone.

use std::fmt;
use std::time::Duration;

use tower_layer::Layer;

use super::refusal::{default_refusal, RefusalResponse};
use super::KeyedLockService;
use crate::KeyedLock;

/// Applies [`KeyedLockService`] to a service. Cheap to clone: the lock is shared.
///
/// See the [module docs](super) for an example.
pub struct KeyedLockLayer<K, X> {
    pub(super) lock: KeyedLock<K>,
    pub(super) extract: X,
    pub(super) timeout: Duration,
    pub(super) queue_max: Option<usize>,
    pub(super) refuse: RefusalResponse,
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
    /// The default lock wait before a [`Refusal::TimedOut`](super::Refusal::TimedOut).
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
    /// admits only requests whose key is free.
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
        KeyedLockService::new(inner, self.clone())
    }
}
