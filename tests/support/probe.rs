//! The instrumented store under the in-process servers: any backend (memory,
//! SQLite, PostgreSQL), optionally slow, that counts the commits in progress,
//! holds them at a gate or a barrier (tests wait on signals, not on time) and
//! injects faults into chosen commits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pointlock::core::store::Sleeper;
use pointlock::core::{
    BoxFuture, Change, Committed, DecidingStore, Decision, MemoryStore, Pending, PipelinedStore,
    PointHistory, PointStore, Request, SequencedRead, StoreError, Unsequenced, UserId, UserPoint,
};
use pointlock::store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use tokio::sync::{mpsc, Barrier, Semaphore};

use super::pg;

/// Which store a scenario runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    /// A SQLite file in a temp dir (group commit on, default options).
    Sqlite,
    /// A fresh database in the test cluster (`POINTLOCK_TEST_PG_URL`), the
    /// user kept locked until its answer (`--pg-pipeline off`). Tests skip it
    /// when [`postgres_skipped`](super::postgres_skipped) says so.
    Postgres,
    /// The same with the user released once its request is placed (the
    /// default, `--pg-pipeline on`).
    PostgresPipelined,
}

impl Backend {
    /// Whether the store decides requests itself (a [`DecidingStore`]).
    pub fn decides(self) -> bool {
        matches!(self, Self::Postgres | Self::PostgresPipelined)
    }
}

/// A fault injected into one commit of a [`ProbeStore`].
#[derive(Clone, Debug)]
pub enum Fault {
    /// Fail with this kind before the change reaches the store (nothing applied).
    Fail(pointlock::core::StoreErrorKind),
    /// Let the store commit the change, then report this error anyway (the
    /// change is applied: an outcome the client cannot know).
    FailAfter(pointlock::core::StoreErrorKind),
    /// Wait this long before the store sees the change.
    Delay(Duration),
    /// Panic before the change reaches the store.
    Panic,
}

/// A store (memory, SQLite or PostgreSQL, optionally slow) that measures how many commits run at once and
/// can hold commits at a gate or a barrier, so tests wait on signals, not on time.
pub struct ProbeStore {
    inner: Box<dyn PointStore>,
    /// Simulated latency before each call of a store without its own (SQLite, PostgreSQL).
    delay: Option<(u64, Mutex<fastrand::Rng>)>,
    in_flight: AtomicUsize,
    in_flight_max: AtomicUsize,
    /// Changes the inner store has sequenced and not yet answered for (a
    /// pipelined store answers after releasing the user).
    unsettled: AtomicUsize,
    gate: Option<Arc<Semaphore>>,
    barrier: Option<(Arc<Barrier>, Duration)>,
    entered: Mutex<Option<mpsc::UnboundedSender<UserId>>>,
    /// One global lock around every commit: the shape of a "global mutex" design.
    global: Option<tokio::sync::Mutex<()>>,
    /// A commit of this amount panics (after the gate), as a handler bug would.
    panic_on_amount: Option<u64>,
    /// Faults injected at given commits (numbered from 1 in the order they
    /// enter the store), see [`Fault`].
    faults: Mutex<std::collections::HashMap<usize, Fault>>,
    commits: AtomicUsize,
    /// The SQLite file's directory; dropped after `inner`.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database; dropped after `inner`.
    _db: Option<pg::TestDatabase>,
}

impl ProbeStore {
    /// A memory store waiting 0..=latency_ms ms per call.
    pub fn new(latency_ms: u64) -> Self {
        let sleep: Sleeper = Arc::new(|d| Box::pin(tokio::time::sleep(d)));
        Self::wrap(
            Box::new(MemoryStore::with_latency(latency_ms, sleep, 42)),
            None,
            None,
            None,
        )
    }

    /// Any store, as it is: no latency, no file or database of its own.
    pub fn over(inner: Box<dyn PointStore>) -> Self {
        Self::wrap(inner, None, None, None)
    }

    /// A store of `backend` waiting 0..=latency_ms ms per call.
    pub async fn on(backend: Backend, latency_ms: u64) -> Self {
        let delay =
            (latency_ms > 0).then(|| (latency_ms, Mutex::new(fastrand::Rng::with_seed(42))));
        match backend {
            Backend::Memory => Self::new(latency_ms),
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(dir.path().join("p.db"), SqliteOptions::default())
                    .expect("open the SQLite store");
                Self::wrap(Box::new(store), delay, Some(dir), None)
            }
            Backend::Postgres | Backend::PostgresPipelined => {
                let db = pg::TestDatabase::create().await;
                let options = PostgresOptions {
                    pipeline: matches!(backend, Backend::PostgresPipelined),
                    ..PostgresOptions::default()
                };
                let store = PostgresStore::connect(db.url(), options)
                    .await
                    .unwrap_or_else(|e| panic!("open the PostgreSQL store at {}: {e}", db.url()));
                Self::wrap(Box::new(store), delay, None, Some(db))
            }
        }
    }

    fn wrap(
        inner: Box<dyn PointStore>,
        delay: Option<(u64, Mutex<fastrand::Rng>)>,
        dir: Option<tempfile::TempDir>,
        db: Option<pg::TestDatabase>,
    ) -> Self {
        Self {
            inner,
            delay,
            in_flight: AtomicUsize::new(0),
            in_flight_max: AtomicUsize::new(0),
            unsettled: AtomicUsize::new(0),
            gate: None,
            barrier: None,
            entered: Mutex::new(None),
            global: None,
            panic_on_amount: None,
            faults: Mutex::new(std::collections::HashMap::new()),
            commits: AtomicUsize::new(0),
            _dir: dir,
            _db: db,
        }
    }

    async fn delay(&self) {
        if let Some((max, rng)) = &self.delay {
            let millis = rng.lock().unwrap().u64(0..=*max);
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
    }

    /// Serialize every commit of every user behind one global lock (negative control).
    pub fn serialize_all(mut self) -> Self {
        self.global = Some(tokio::sync::Mutex::new(()));
        self
    }

    /// Every commit waits for a permit of `gate` (the test adds permits).
    pub fn with_gate(mut self, gate: Arc<Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Every commit waits at `barrier`; one that waits longer than `patience` fails.
    pub fn with_barrier(mut self, barrier: Arc<Barrier>, patience: Duration) -> Self {
        self.barrier = Some((barrier, patience));
        self
    }

    /// A commit of `amount` panics (after passing the gate), changing nothing.
    pub fn with_panic_on(mut self, amount: u64) -> Self {
        self.panic_on_amount = Some(amount);
        self
    }

    /// Inject `fault` into the `n`th commit (from 1, in the order commits
    /// enter the store).
    pub fn with_fault(self, n: usize, fault: Fault) -> Self {
        self.faults.lock().unwrap().insert(n, fault);
        self
    }

    /// Commits that have entered the store so far.
    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }

    /// Report each commit's user as it enters the store.
    pub fn entered(&self) -> mpsc::UnboundedReceiver<UserId> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.entered.lock().unwrap() = Some(tx);
        rx
    }

    /// The most commits ever in progress at once.
    pub fn in_flight_max(&self) -> usize {
        self.in_flight_max.load(Ordering::SeqCst)
    }

    /// Changes sequenced by the inner store and not yet answered for.
    pub fn unsettled(&self) -> usize {
        self.unsettled.load(Ordering::SeqCst)
    }
}

impl PointStore for ProbeStore {
    fn idempotency_record(
        &self,
        id: UserId,
        key: &pointlock_core::IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<pointlock_core::IdempotencyRecord>, StoreError>> {
        let key = key.clone();
        Box::pin(async move {
            self.delay().await;
            self.inner.idempotency_record(id, &key).await
        })
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.inner.sweep_idempotency(expired_before, limit)
    }

    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        Box::pin(async move {
            self.delay().await;
            self.inner.user_point(id).await
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            self.delay().await;
            self.inner.histories(id).await
        })
    }

    fn histories_page(
        &self,
        id: UserId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            self.delay().await;
            self.inner.histories_page(id, after, limit).await
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        Box::pin(async move {
            let (user, amount) = (change.user_id(), change.amount().get());
            let commit = move || std::future::ready(Ok(self.inner.commit(change)));
            self.probe(user, amount, commit).await?.await
        })
    }

    /// Pipelined exactly when the inner store is.
    fn pipelined(&self) -> Option<&dyn PipelinedStore> {
        self.inner.pipelined().map(|_| self as &dyn PipelinedStore)
    }

    /// Deciding exactly when the inner store is.
    fn deciding(&self) -> Option<&dyn DecidingStore> {
        self.inner.deciding().map(|_| self as &dyn DecidingStore)
    }
}

/// The hooks run before the inner store places the request.
impl DecidingStore for ProbeStore {
    fn submit(&self, request: Request) -> BoxFuture<'_, Result<Decision<'_>, StoreError>> {
        Box::pin(async move {
            let inner = self
                .inner
                .deciding()
                .ok_or_else(|| StoreError::new("ProbeStore: the inner store is not deciding"))?;
            let (user, amount) = (request.user_id(), request.amount().get());
            self.probe(user, amount, move || inner.submit(request))
                .await
        })
    }

    fn barrier(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<BoxFuture<'_, Result<(), StoreError>>, StoreError>> {
        Box::pin(async move {
            self.delay().await;
            let inner = self
                .inner
                .deciding()
                .ok_or_else(|| StoreError::new("ProbeStore: the inner store is not deciding"))?;
            inner.barrier(id).await
        })
    }
}

impl ProbeStore {
    /// The inner store, pipelined (only called when it is: see `pipelined`).
    fn inner_pipelined(&self) -> Result<&dyn PipelinedStore, StoreError> {
        self.inner
            .pipelined()
            .ok_or_else(|| StoreError::new("ProbeStore: the inner store is not pipelined"))
    }

    /// One change of `user` through the hooks, before `hand` hands it to the
    /// inner store (a pipelined inner store releases the user there, as it
    /// would unwrapped); resolves with the outcome to await, counted.
    async fn probe<'a, T: Send + 'a, F, H>(
        &'a self,
        user: UserId,
        amount: u64,
        hand: H,
    ) -> Result<BoxFuture<'a, Result<T, StoreError>>, StoreError>
    where
        H: FnOnce() -> F,
        F: std::future::Future<Output = Result<BoxFuture<'a, Result<T, StoreError>>, StoreError>>,
    {
        let number = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        // (Counted on entry: the gauge measures commits the service issued at once.)
        self.in_flight_max.fetch_max(now, Ordering::SeqCst);
        if let Some(tx) = self.entered.lock().unwrap().as_ref() {
            let _ = tx.send(user);
        }
        let sequenced = async {
            let _global = match &self.global {
                Some(global) => Some(global.lock().await),
                None => None,
            };
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            if let Some((barrier, patience)) = &self.barrier {
                tokio::time::timeout(*patience, barrier.wait())
                    .await
                    .map_err(|_| StoreError::new("barrier: other users never arrived"))?;
            }
            assert_ne!(
                Some(amount),
                self.panic_on_amount,
                "ProbeStore: a commit of this amount panics"
            );
            let fault = self.faults.lock().unwrap().remove(&number);
            let injected = |kind| StoreError::with_kind(kind, "injected fault");
            match fault {
                None => {}
                Some(Fault::Fail(kind)) => return Err(injected(kind)),
                Some(Fault::Delay(pause)) => tokio::time::sleep(pause).await,
                Some(Fault::Panic) => panic!("ProbeStore: injected panic at commit {number}"),
                Some(Fault::FailAfter(kind)) => {
                    self.delay().await;
                    let pending = hand().await?;
                    let failed: BoxFuture<'_, Result<T, StoreError>> = Box::pin(async move {
                        pending.await?;
                        Err(injected(kind))
                    });
                    return Ok(failed);
                }
            }
            self.delay().await;
            hand().await
        }
        .await;
        match sequenced {
            Ok(pending) => {
                self.unsettled.fetch_add(1, Ordering::SeqCst);
                let counted: BoxFuture<'_, Result<T, StoreError>> = Box::pin(async move {
                    let outcome = pending.await;
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    self.unsettled.fetch_sub(1, Ordering::SeqCst);
                    outcome
                });
                Ok(counted)
            }
            Err(error) => {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Err(error)
            }
        }
    }
}

/// The hooks run before the inner store sequences the change.
impl PipelinedStore for ProbeStore {
    fn sequenced_point(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<SequencedRead<'_, Option<UserPoint>>, StoreError>> {
        Box::pin(async move {
            self.delay().await;
            self.inner_pipelined()?.sequenced_point(id).await
        })
    }

    fn sequenced_idempotency_record<'a>(
        &'a self,
        id: UserId,
        key: &'a pointlock_core::IdempotencyKey,
    ) -> BoxFuture<
        'a,
        Result<SequencedRead<'a, Option<pointlock_core::IdempotencyRecord>>, StoreError>,
    > {
        Box::pin(async move {
            self.delay().await;
            self.inner_pipelined()?
                .sequenced_idempotency_record(id, key)
                .await
        })
    }

    fn sequence(&self, change: Unsequenced) -> BoxFuture<'_, Result<Pending<'_>, StoreError>> {
        Box::pin(async move {
            let inner = self.inner_pipelined()?;
            let (user, amount) = (change.change().user_id(), change.change().amount().get());
            self.probe(user, amount, move || inner.sequence(change))
                .await
        })
    }
}
