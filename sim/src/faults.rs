//! Store faults at every step: [`FaultStore`] wraps the real store and, drawn
//! from the seed, delays calls and fails them, before the store saw them
//! (nothing changed) or after a change was durable (the answer must then be
//! "outcome unknown", never "nothing changed"). The SQLite faults that live
//! in the store itself (a failed COMMIT, a writer panic, a failing statement)
//! are switched on through the test fields of
//! [`SqliteOptions`](pointlock_store::SqliteOptions) by the runner.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pointlock_core::{
    BoxFuture, Change, Committed, DecidingStore, IdempotencyKey, IdempotencyRecord, Pending,
    PipelinedStore, PointHistory, PointStore, SequencedRead, StoreError, StoreErrorKind,
    Unsequenced, UserId, UserPoint,
};
use pointlock_store::SqliteStore;

/// How often the wrapper injects each fault (drawn per seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRates {
    /// Percent of store calls delayed.
    pub delay_percent: u8,
    /// The longest delay, in simulated milliseconds.
    pub delay_max_millis: u64,
    /// Per mille of store calls failed before the store sees them.
    pub error_before_permille: u16,
    /// Per mille of changes answered "outcome unknown" after they are durable.
    pub unknown_after_permille: u16,
}

impl FaultRates {
    /// No faults.
    pub const NONE: FaultRates = FaultRates {
        delay_percent: 0,
        delay_max_millis: 0,
        error_before_permille: 0,
        unknown_after_permille: 0,
    };

    /// Rates drawn from `rng`: a quarter of the seeds run without wrapper
    /// faults, the rest with up to 40% delays of up to 150 ms and up to 6%
    /// errors of each kind.
    pub fn draw(rng: &mut fastrand::Rng) -> Self {
        if rng.u8(..4) == 0 {
            return Self::NONE;
        }
        Self {
            delay_percent: rng.u8(0..=40),
            delay_max_millis: rng.u64(1..=150),
            error_before_permille: rng.u16(0..=60),
            unknown_after_permille: rng.u16(0..=60),
        }
    }
}

/// Counts of what the wrapper injected.
#[derive(Debug, Default)]
pub struct Injected {
    /// Calls delayed.
    pub delays: AtomicUsize,
    /// Calls failed before the store saw them.
    pub errors_before: AtomicUsize,
    /// Durable changes answered "outcome unknown".
    pub unknown_after: AtomicUsize,
}

/// The real store behind seeded delays and errors. A pipelined store stays
/// pipelined through it.
pub struct FaultStore {
    inner: Arc<dyn PointStore>,
    lockstep: Option<Arc<SqliteStore>>,
    rates: FaultRates,
    rng: Mutex<fastrand::Rng>,
    in_flight: Arc<AtomicUsize>,
    /// What was injected so far.
    pub injected: Injected,
}

impl FaultStore {
    /// `inner` behind the faults of `rates`, drawn from `seed`.
    pub fn new(inner: Arc<dyn PointStore>, rates: FaultRates, seed: u64) -> Self {
        Self {
            inner,
            lockstep: None,
            rates,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            injected: Injected::default(),
        }
    }

    /// The same wrapper in **lockstep** with `sqlite` (the store it wraps):
    /// every call of the inner store is driven to its end on the spot, the
    /// runtime's thread waiting (spinning) while the store's writer thread
    /// and blocking readers work, and after each call the writer's queue is
    /// waited empty. Each change is then committed alone (no group commit).
    pub fn in_lockstep(mut self, sqlite: Arc<SqliteStore>) -> Self {
        self.lockstep = Some(sqlite);
        self
    }

    /// Calls of the inner store under way (the runner keeps simulated time
    /// still while a store that works on an OS thread answers them).
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.in_flight)
    }

    fn roll(&self, permille: u16) -> bool {
        permille > 0
            && self
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .u16(..1000)
                < permille
    }

    /// A seeded delay, then maybe an error before the store is called.
    async fn before(&self) -> Result<(), StoreError> {
        let delay = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            (self.rates.delay_percent > 0 && rng.u8(..100) < self.rates.delay_percent)
                .then(|| rng.u64(0..=self.rates.delay_max_millis))
        };
        if let Some(millis) = delay {
            self.injected.delays.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        if self.roll(self.rates.error_before_permille) {
            self.injected.errors_before.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::new("injected store error (nothing changed)"));
        }
        Ok(())
    }

    /// Whether a durable change is answered "outcome unknown" instead.
    fn unknown_after(&self) -> bool {
        let hit = self.roll(self.rates.unknown_after_permille);
        if hit {
            self.injected.unknown_after.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// `future`, counted as in flight while it runs; in lockstep, driven to
    /// its end at once.
    async fn counted<T>(&self, future: impl Future<Output = T>) -> T {
        let _counted = Counted::new(&self.in_flight);
        match &self.lockstep {
            None => future.await,
            Some(sqlite) => {
                let value = drive(future);
                while sqlite.queued_ops() > 0 {
                    std::thread::yield_now();
                }
                value
            }
        }
    }

    fn inner_pipelined(&self) -> Result<&dyn PipelinedStore, StoreError> {
        self.inner
            .pipelined()
            .ok_or_else(|| StoreError::new("the store is no longer pipelined"))
    }
}

/// Poll `future` until it is done, on this thread, without yielding to the
/// runtime: what it waits for is done by other threads (the SQLite writer,
/// the blocking pool), which need no help from the runtime's thread.
pub fn drive<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::yield_now();
    }
}

/// One in-flight call, counted until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn outcome_unknown() -> StoreError {
    StoreError::with_kind(
        StoreErrorKind::OutcomeUnknown,
        "injected: the change is durable but its answer was lost",
    )
}

impl PointStore for FaultStore {
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        Box::pin(async move {
            self.before().await?;
            self.counted(self.inner.user_point(id)).await
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            self.before().await?;
            self.counted(self.inner.histories(id)).await
        })
    }

    fn histories_page(
        &self,
        id: UserId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            self.before().await?;
            self.counted(self.inner.histories_page(id, after, limit))
                .await
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        Box::pin(async move {
            self.before().await?;
            let committed = self.counted(self.inner.commit(change)).await?;
            if self.unknown_after() {
                return Err(outcome_unknown());
            }
            Ok(committed)
        })
    }

    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>> {
        let key = key.clone();
        Box::pin(async move {
            self.before().await?;
            self.counted(self.inner.idempotency_record(id, &key)).await
        })
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.inner.sweep_idempotency(expired_before, limit)
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.ready()
    }

    fn pipelined(&self) -> Option<&dyn PipelinedStore> {
        self.inner.pipelined().map(|_| self as &dyn PipelinedStore)
    }

    fn deciding(&self) -> Option<&dyn DecidingStore> {
        None
    }
}

impl PipelinedStore for FaultStore {
    fn sequenced_point(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<SequencedRead<'_, Option<UserPoint>>, StoreError>> {
        Box::pin(async move {
            self.before().await?;
            let inner = self.inner_pipelined()?;
            self.counted(inner.sequenced_point(id)).await
        })
    }

    fn sequenced_idempotency_record<'a>(
        &'a self,
        id: UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<SequencedRead<'a, Option<IdempotencyRecord>>, StoreError>> {
        Box::pin(async move {
            self.before().await?;
            let inner = self.inner_pipelined()?;
            self.counted(inner.sequenced_idempotency_record(id, key))
                .await
        })
    }

    fn sequence(&self, change: Unsequenced) -> BoxFuture<'_, Result<Pending<'_>, StoreError>> {
        Box::pin(async move {
            self.before().await?;
            let inner = self.inner_pipelined()?;
            let pending = self.counted(inner.sequence(change)).await?;
            let lose_answer = self.unknown_after();
            let answer: Pending<'_> = Box::pin(async move {
                let committed = self.counted(pending).await?;
                if lose_answer {
                    return Err(outcome_unknown());
                }
                Ok(committed)
            });
            Ok(answer)
        })
    }
}
