//! The planted bugs, one per class the checkers exist for: each run of a
//! negative control must be failed by a checker within a stated number of
//! seeds. Two are the stack's own negative controls behind the crates'
//! `test-util` features (the SQLite store's [`NegativeControl`]s, the
//! unsynchronized lock and unconditional commits); two are layers of this
//! crate, compiled only with its `test-util` feature like everything else
//! here.
//!
//! [`NegativeControl`]: pointlock_store::NegativeControl

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use keylock::layer::HeldLock;
use pointlock_core::{KeyGuard, UserId};
use tower_service::Service;

/// A bug planted on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// SQLite answers a change once sequenced, before it is durable
    /// (`NegativeControl::AnswerAtSequencing`): a crash or failed COMMIT loses
    /// an acknowledged change.
    AnswerBeforeDurable,
    /// SQLite answers reads from the sequenced state
    /// (`NegativeControl::DirtyReads`): a client is shown a value that is not
    /// durable, and later changes than the read's place.
    ReadSequencedState,
    /// No mutual exclusion (`KeyedLock::unsynchronized`) and no commit
    /// condition (`PointService::without_commit_condition`): concurrent
    /// changes of a user overwrite each other.
    LostUpdate,
    /// A layer in front of the lock that holds some requests back before they
    /// take their place: requests of a user applied out of arrival order.
    FifoInversion,
    /// A layer behind the lock that keeps a clone of some requests' guards
    /// for ever: the user stays locked, and the lock table never empties.
    LeakedGuard,
}

impl Plant {
    /// Every plant.
    pub const ALL: [Plant; 5] = [
        Plant::AnswerBeforeDurable,
        Plant::ReadSequencedState,
        Plant::LostUpdate,
        Plant::FifoInversion,
        Plant::LeakedGuard,
    ];

    /// The plant named `name` (its variant name in kebab case).
    pub fn from_name(name: &str) -> Option<Plant> {
        Self::ALL.into_iter().find(|plant| plant.name() == name)
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Plant::AnswerBeforeDurable => "answer-before-durable",
            Plant::ReadSequencedState => "read-sequenced-state",
            Plant::LostUpdate => "lost-update",
            Plant::FifoInversion => "fifo-inversion",
            Plant::LeakedGuard => "leaked-guard",
        }
    }
}

/// The FIFO-inversion plant: one request in four waits a seeded 0–20 ms
/// before it reaches the lock layer's `call` (where its place is taken),
/// although the client sent it, and the log recorded its arrival, now.
#[derive(Clone)]
pub struct Reorder<S> {
    inner: S,
    rng: Arc<Mutex<fastrand::Rng>>,
}

impl<S> Reorder<S> {
    /// `inner` behind the plant, its choices drawn from `seed`.
    pub fn new(inner: S, seed: u64) -> Self {
        Self {
            inner,
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5EED))),
        }
    }
}

/// A boxed response future of the plants.
type PlantFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for Reorder<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = PlantFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let hold = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            (rng.u8(..4) == 0).then(|| rng.u64(0..=20))
        };
        match hold {
            None => Box::pin(self.inner.call(req)),
            Some(millis) => {
                let mut inner = self.inner.clone();
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    inner.call(req).await
                })
            }
        }
    }
}

/// The leaked-guard plant: one request in twenty-five has a clone of its
/// user's guard kept for ever.
#[derive(Clone)]
pub struct Leak<S> {
    inner: S,
    rng: Arc<Mutex<fastrand::Rng>>,
    kept: Arc<Mutex<Vec<Arc<KeyGuard<UserId>>>>>,
}

impl<S> Leak<S> {
    /// `inner` behind the plant, keeping guards in `kept`.
    pub fn new(inner: S, seed: u64, kept: Arc<Mutex<Vec<Arc<KeyGuard<UserId>>>>>) -> Self {
        Self {
            inner,
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(seed ^ 0x1EA4))),
            kept,
        }
    }
}

impl<S, B> Service<Request<B>> for Leak<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let leak = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .u8(..25)
            == 0;
        if leak {
            if let Some(guard) = req
                .extensions()
                .get::<HeldLock<UserId>>()
                .and_then(HeldLock::guard)
            {
                self.kept
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(guard);
            }
        }
        self.inner.call(req)
    }
}
