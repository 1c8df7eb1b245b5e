//! Shared harness: an in-process server on a loopback port over an instrumented store.
#![allow(dead_code)]

pub mod jwt;
#[path = "../pg_support/mod.rs"]
pub mod pg_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pointlock::core::store::Sleeper;
use pointlock::core::PointService;
use pointlock::core::{
    BoxFuture, Change, Committed, KeyedLock, MemoryStore, Pending, PipelinedStore, PointHistory,
    PointStore, Policy, SequencedRead, StoreError, Unsequenced, UserId, UserPoint,
};
use pointlock::server::app::{build_app, serve};
use pointlock::server::clock::SystemClock;
use pointlock::server::AppOptions;
use pointlock::store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use serde_json::Value;
use tokio::sync::{mpsc, Barrier, Semaphore};
use tokio::task::JoinHandle;

/// Which store a scenario runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    /// A SQLite file in a temp dir (group commit on, default options).
    Sqlite,
    /// A fresh database in the test cluster (`POINTLOCK_TEST_PG_URL`), default
    /// options. Tests skip it when [`postgres_skipped`] says so.
    Postgres,
    /// The same with pipelined commits (`--pg-pipeline on`).
    PostgresPipelined,
}

/// Whether to skip a test on PostgreSQL: `POINTLOCK_TEST_PG_URL` is unset (a note
/// goes to stderr). Panics instead under `CI=true`.
pub fn postgres_skipped() -> bool {
    pg_support::cluster_url().is_none()
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
    _db: Option<pg_support::TestDatabase>,
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
                let db = pg_support::TestDatabase::create().await;
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
        db: Option<pg_support::TestDatabase>,
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
    async fn probe<'a, F, H>(
        &'a self,
        user: UserId,
        amount: u64,
        hand: H,
    ) -> Result<Pending<'a>, StoreError>
    where
        H: FnOnce() -> F,
        F: std::future::Future<Output = Result<Pending<'a>, StoreError>>,
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
                    let failed: Pending<'_> = Box::pin(async move {
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
                let counted: Pending<'_> = Box::pin(async move {
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

pub struct TestServer {
    pub addr: SocketAddr,
    pub lock: KeyedLock<UserId>,
    pub store: Arc<ProbeStore>,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

impl TestServer {
    /// A server with the lock layer and a real lock.
    pub async fn start(store: ProbeStore, options: AppOptions) -> Self {
        Self::start_with_lock(store, options, KeyedLock::new()).await
    }

    pub async fn start_with_lock(
        store: ProbeStore,
        options: AppOptions,
        lock: KeyedLock<UserId>,
    ) -> Self {
        Self::start_with_policy(store, options, lock, Policy::default()).await
    }

    pub async fn start_with_policy(
        store: ProbeStore,
        options: AppOptions,
        lock: KeyedLock<UserId>,
        policy: Policy,
    ) -> Self {
        Self::start_inner(store, options, lock, policy, true).await
    }

    /// A server whose service makes unconditional changes (the store's condition
    /// switched off: test-util negative controls only).
    pub async fn start_unconditional(
        store: ProbeStore,
        options: AppOptions,
        lock: KeyedLock<UserId>,
    ) -> Self {
        Self::start_inner(store, options, lock, Policy::default(), false).await
    }

    async fn start_inner(
        store: ProbeStore,
        options: AppOptions,
        lock: KeyedLock<UserId>,
        policy: Policy,
        conditional: bool,
    ) -> Self {
        Self::start_shared(Arc::new(store), options, lock, policy, conditional).await
    }

    /// A server over a store that outlives it (several servers in turn over
    /// one store: the model-based tests start one per case); `conditional:
    /// false` as in [`start_unconditional`](Self::start_unconditional).
    pub async fn start_shared(
        store: Arc<ProbeStore>,
        options: AppOptions,
        lock: KeyedLock<UserId>,
        policy: Policy,
        conditional: bool,
    ) -> Self {
        let clock = Arc::new(SystemClock::default());
        let core = PointService::with_lock(
            store.clone() as Arc<dyn PointStore>,
            policy,
            clock,
            lock.clone(),
        );
        let svc = Arc::new(if conditional {
            core
        } else {
            core.without_commit_condition()
        });
        let app = build_app(svc, &options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            serve(listener, app, shutdown, Duration::from_secs(5))
                .await
                .unwrap();
        });
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
        Self {
            addr,
            lock,
            store,
            client,
            shutdown: Some(tx),
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&str>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        let res = self.client.request(req).await.expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("non-JSON body {bytes:?}: {e}"));
        Reply {
            status,
            headers,
            json,
        }
    }

    /// A request with extra headers; the raw answer (status, headers, body bytes).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, http::HeaderValue::from_bytes(value).unwrap());
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let res = self.client.request(req).await.expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        (
            status,
            headers,
            res.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// `GET path`: status, headers and the body as text (for non-JSON answers).
    pub async fn get_text(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let req = Request::get(format!("http://{}{}", self.addr, path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = self.client.request(req).await.expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("a UTF-8 body");
        (status, headers, text)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn charge(&self, user: u64, amount: u64) -> Reply {
        let body = format!("{{\"amount\":{amount}}}");
        self.send(Method::PATCH, &format!("/point/{user}/charge"), Some(&body))
            .await
    }

    /// `charge` in a task of its own (to queue it behind a holder).
    pub fn spawn_charge(self: &Arc<Self>, user: u64, amount: u64) -> JoinHandle<Reply> {
        let server = Arc::clone(self);
        tokio::spawn(async move { server.charge(user, amount).await })
    }

    /// `use_points` in a task of its own.
    pub fn spawn_use(self: &Arc<Self>, user: u64, amount: u64) -> JoinHandle<Reply> {
        let server = Arc::clone(self);
        tokio::spawn(async move { server.use_points(user, amount).await })
    }

    pub async fn use_points(&self, user: u64, amount: u64) -> Reply {
        let body = format!("{{\"amount\":{amount}}}");
        self.send(Method::PATCH, &format!("/point/{user}/use"), Some(&body))
            .await
    }

    pub async fn balance(&self, user: u64) -> u64 {
        let reply = self.get(&format!("/point/{user}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json["point"].as_u64().unwrap()
    }

    pub async fn history(&self, user: u64) -> Vec<Value> {
        let reply = self.get(&format!("/point/{user}/histories")).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json.as_array().unwrap().clone()
    }

    /// Invariant 1: the balance equals the replayed history, and never dipped below 0.
    pub async fn assert_history_replays(&self, user: u64) -> u64 {
        let mut running: i128 = 0;
        for row in self.history(user).await {
            let amount = i128::from(row["amount"].as_u64().unwrap());
            match row["type"].as_str().unwrap() {
                "CHARGE" => running += amount,
                "USE" => running -= amount,
                other => panic!("unknown type {other}"),
            }
            assert!(running >= 0, "history goes negative");
        }
        let balance = self.balance(user).await;
        assert_eq!(i128::from(balance), running, "balance != replayed history");
        balance
    }

    /// Wait (bounded) until `condition` holds on the lock: a deterministic signal.
    pub async fn wait_for_lock(&self, what: &str, condition: impl Fn(&KeyedLock<UserId>) -> bool) {
        for _ in 0..10_000 {
            if condition(&self.lock) {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    /// Wait (bounded) until no user is locked and every change the store
    /// sequenced has been answered for: on a pipelined store a user is
    /// released before its change is durable, so an empty lock table alone
    /// does not mean the data is settled.
    pub async fn wait_until_settled(&self, what: &str) {
        for _ in 0..10_000 {
            if self.lock.is_empty() && self.store.unsettled() == 0 {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for: {what}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Options for concurrency tests: a generous lock timeout so 100 queued requests
/// over a slow store never time out.
pub fn patient() -> AppOptions {
    AppOptions {
        lock_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(60),
        ..AppOptions::default()
    }
}

/// Read from a raw connection until `needle` shows up or the peer closes; bounded
/// to 10 s so a test can never hang on a connection the server keeps open.
pub async fn read_until(raw: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0_u8; 4096];
        loop {
            match raw.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if String::from_utf8_lossy(&buf).contains(needle) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Scenarios on PostgreSQL with pipelined commits: `name => scenario;`
/// (skipped without `POINTLOCK_TEST_PG_URL`, outside CI).
#[macro_export]
macro_rules! on_pg_pipelined {
    (#[$test:meta] $($name:ident => $scenario:ident;)*) => {$(
        #[$test]
        async fn $name() {
            if $crate::common::postgres_skipped() {
                return;
            }
            $scenario($crate::common::Backend::PostgresPipelined).await;
        }
    )*};
}

/// Each scenario `async fn scenario(backend: Backend)` as three tests, with the
/// test attribute given first: on the memory store (the plain name), on SQLite
/// (`sqlite_` + name) and on PostgreSQL (`pg_` + name; skipped without
/// `POINTLOCK_TEST_PG_URL`, outside CI).
#[macro_export]
macro_rules! on_every_store {
    (#[$test:meta] $($name:ident / $sqlite:ident / $pg:ident => $scenario:ident;)*) => {$(
        #[$test]
        async fn $name() {
            $scenario($crate::common::Backend::Memory).await;
        }

        #[$test]
        async fn $sqlite() {
            $scenario($crate::common::Backend::Sqlite).await;
        }

        #[$test]
        async fn $pg() {
            if $crate::common::postgres_skipped() {
                return;
            }
            $scenario($crate::common::Backend::Postgres).await;
        }
    )*};
}
