//! [`SqliteStore`]: the durable store. An acknowledged change is on disk.
//!
//! One SQLite file (bundled SQLite, no system library) in WAL mode with
//! `synchronous=FULL`: every commit fsyncs the write-ahead log before it returns,
//! so a change the caller was told about survives `kill -9` and power loss (to the
//! extent the disk honours fsync).
//!
//! The store in five parts, one file each:
//!
//! - this file: [`SqliteStore`], its options, and the [`PointStore`] methods;
//! - `open.rs`: the file lock, the checks that refuse a bad file, WAL, migrations;
//! - `writer.rs`: the writer thread, group commit, the **conditional** write of
//!   each change, and **fail-stop** after a failed COMMIT;
//! - `cache.rs`: the write-through cache of committed balances;
//! - `readers.rs`: the read-only connections.
//!
//! The sequenced state of the pipeline is `../sequenced.rs` (shared with the
//! PostgreSQL store).
//!
//! # Writes: one writer thread, group commit, a condition per change
//!
//! [`commit`](PointStore::commit) queues the change on a bounded channel and
//! waits for its answer. A single writer thread owns the only writable
//! connection and commits changes in batches, one transaction and one fsync per
//! batch, then answers each caller (details in `writer.rs`). Each change is
//! written only if the user's stored balance is still the one the change was
//! computed from; otherwise it is refused as a conflict and changes nothing, and
//! the rest of its batch commits. With the per-user lock in front a user has one
//! change in flight, so the condition never fires; it is the second line of
//! defence, for writers that bypass the lock.
//!
//! **Cancel safety and the guard.** Once queued, a change is committed or refused
//! by the writer whether or not its caller still waits, so a dropped `commit`
//! future leaves all of the change or none of it. The change carries its user's
//! guard; the writer drops it once the change is settled: after the COMMIT and
//! the cache update, just before it answers the caller. The user stays locked
//! until then, whatever happens to the caller (pipelined: until the change is
//! sequenced, after which it commits or is refused in sequence order whatever
//! happens to the caller). [`SqliteStore::close`] (also run on drop) stops taking
//! changes, lets the writer finish everything already queued, and joins it.
//!
//! **Fail-stop.** A statement that fails rolls its transaction back and its
//! batch is retried one change at a time. A COMMIT that fails (an I/O error, a
//! failed fsync) is never retried: the store stops taking changes until restart
//! ([`SqliteStore::is_stopped`]); the batch's callers get
//! `STORE_OUTCOME_UNKNOWN`, every later change `STORE_UNAVAILABLE`; reads go on.
//! Why: after a failed fsync the kernel may have dropped the dirty pages, so a
//! retried COMMIT can report success for data that is not on disk, and frames of
//! the failed one may reappear at the next start; only a restart, where SQLite
//! recovers from what is really on disk, gives a known state.
//!
//! # Pipelining (the default; [`SqliteOptions::pipeline`])
//!
//! Pipelined, the store is a [`PipelinedStore`] (its promises are stated
//! there) and says so through [`PointStore::pipelined`]:
//! [`sequence`](PipelinedStore::sequence) checks a change against the
//! **sequenced state** (every change handed to the writer, durable or not),
//! hands it to the writer, makes its result the sequenced state and drops its
//! guard, all under the user's shard mutex; the caller's answer still waits for
//! the batch's COMMIT. So the user's next request computes on the sequenced
//! state while this change waits for its fsync, and one user's burst shares an
//! fsync. The protocol and its failure cases are in `store/sequenced.rs`. Off,
//! the store is a plain [`PointStore`]: a user stays locked until its change is
//! durable.
//!
//! # Reads: a balance cache, and read-only connections never behind the writer
//!
//! Balances are read through a write-through cache of committed balances
//! (`cache.rs`); with it, the read before each charge and most `GET
//! /point/{id}` cost a hash-map lookup instead of a blocking-pool hand-off and a
//! SQLite query. Cache misses and [`histories`](PointStore::histories) run on a
//! small pool of read-only connections in tokio's blocking pool (`readers.rs`).
//! A caller is answered only after its batch commits and its balance is cached,
//! so a read issued after an answer sees that change.

mod cache;
mod open;
mod readers;
mod writer;

#[cfg(test)]
mod pipeline_tests;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use pointlock_core::{
    BoxFuture, Change, Committed, IdempotencyKey, IdempotencyRecord, Pending, PipelinedStore,
    PointHistory, PointStore, ReadMark, SequencedRead, StoreError, StoreErrorKind, Unsequenced,
    UserId, UserPoint,
};
use rusqlite::{params, OptionalExtension};
use tokio::sync::{oneshot, Semaphore};

use super::{corrupt_row, history_row, idempotency_row, to_i64};

use super::sequenced::{self, Overlay, Seen, Sequencing};
use cache::BalanceCache;
pub use cache::CACHE_SHARDS;
pub use open::{OpenError, SCHEMA_VERSION};
use readers::Readers;
pub use writer::CommitStats;
use writer::{Barrier, Batching, FailStop, Job, Stats, Sweep, Work, Writer};

const SELECT_POINT: &str = "SELECT point, update_millis FROM user_point WHERE id = ?1";
const SELECT_KEY: &str = "SELECT type, amount, point, time_millis FROM idempotency
     WHERE user_id = ?1 AND key = ?2";
const SELECT_HISTORIES: &str =
    "SELECT id, type, amount, time_millis FROM point_history WHERE user_id = ?1 ORDER BY id";

/// Tuning of a [`SqliteStore`]. The defaults suit the server.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The most changes one transaction carries. `1` turns group commit off (one
    /// transaction and one fsync per change).
    pub batch_ops_max: usize,
    /// The longest the writer keeps collecting after the first change of a
    /// batch. Zero: commit whatever is queued at once.
    pub batch_wait: Duration,
    /// How often the collecting writer looks at the queue: the batch closes at
    /// the first look that finds nothing new (within
    /// [`batch_wait`](Self::batch_wait)). The writer sleeps between looks.
    pub batch_idle: Duration,
    /// The most changes queued for the writer; further commits wait (backpressure).
    pub queue_ops_max: usize,
    /// Read-only connections (reads beyond this many at once wait for one).
    pub readers: usize,
    /// How long a connection retries when the file is busy.
    pub busy_timeout: Duration,
    /// Run `PRAGMA quick_check` at open (reads the whole file once).
    pub quick_check: bool,
    /// The most balances kept in the write-through cache (see the [module
    /// docs](self)); `0` turns the cache off. The cache is split in
    /// [`CACHE_SHARDS`] shards of `balance_cache_max / CACHE_SHARDS` entries; a
    /// full shard is emptied before it takes a new entry.
    pub balance_cache_max: usize,
    /// Pipelined group commit (see the [module docs](self)): a user is
    /// released once its change is sequenced, not once it is durable, so one
    /// user's burst shares an fsync. `false`: the user stays locked until the
    /// change is durable (one fsync per change of one user).
    pub pipeline: bool,
    /// What the pipeline must never do, done on purpose: for the negative
    /// controls of the tests that must catch it. `None` in any real use.
    #[doc(hidden)]
    pub negative_control: Option<NegativeControl>,
    /// Fault injection for unit tests: while closed, the writer waits before
    /// each batch (a deterministic "not durable yet").
    #[cfg(test)]
    pub(crate) gate: Option<Arc<Gate>>,
    /// Fault injection for unit tests: every change of this amount fails in a
    /// statement (as on a full disk), without failing stop.
    #[cfg(test)]
    pub(crate) fail_amount: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Fault injection for unit tests: while set, every COMMIT fails.
    #[cfg(test)]
    pub(crate) fail_commits: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Fault injection for unit tests: the writer sets `PRAGMA max_page_count`
    /// to this before each batch (a full disk, as SQLite sees one: SQLITE_FULL).
    #[cfg(test)]
    pub(crate) page_limit: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            batch_ops_max: 256,
            batch_wait: Duration::from_micros(250),
            batch_idle: Duration::from_micros(50),
            queue_ops_max: 4_096,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            quick_check: true,
            balance_cache_max: 1 << 20,
            pipeline: true,
            negative_control: None,
            #[cfg(test)]
            gate: None,
            #[cfg(test)]
            fail_amount: None,
            #[cfg(test)]
            fail_commits: None,
            #[cfg(test)]
            page_limit: None,
        }
    }
}

/// A negative control of the pipelined store (see
/// [`SqliteOptions::negative_control`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegativeControl {
    /// Answer a change as soon as it is sequenced, before it is durable.
    AnswerAtSequencing,
    /// Answer reads (`GET /point/{id}`) and settle marked answers from the
    /// sequenced state, without waiting for it to be durable.
    DirtyReads,
}

/// A gate the writer waits at before each batch while it is closed (tests).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Gate {
    closed: Mutex<bool>,
    opened: std::sync::Condvar,
    /// Batches that have waited at the gate.
    pub(crate) waited: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl Gate {
    pub(crate) fn close(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    pub(crate) fn open(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.opened.notify_all();
    }

    /// The writer: wait while closed.
    pub(crate) fn pass(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            self.waited
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        while *closed {
            closed = self
                .opened
                .wait(closed)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl SqliteOptions {
    /// The same options with group commit off: every change its own transaction.
    pub fn without_group_commit(self) -> Self {
        Self {
            batch_ops_max: 1,
            batch_wait: Duration::ZERO,
            batch_idle: Duration::ZERO,
            ..self
        }
    }
}

/// The durable SQLite store. See the [module docs](self).
pub struct SqliteStore {
    path: PathBuf,
    sender: Mutex<Option<mpsc::Sender<Work>>>,
    queue: Arc<Semaphore>,
    queue_ops_max: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Readers>,
    stats: Arc<Stats>,
    stop: Arc<FailStop>,
    cache: Option<Arc<BalanceCache>>,
    /// The sequenced state, when pipelined.
    overlay: Option<Arc<Overlay>>,
    negative_control: Option<NegativeControl>,
    /// The advisory lock on the database file; dropped after everything above
    /// has been closed (fields drop in declaration order, after `Drop::drop`).
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (or create) the database at `path`, migrate it to [`SCHEMA_VERSION`],
    /// and start the writer. Fails fast, leaving an existing file untouched, if the
    /// file is corrupt, foreign, newer, locked by another process, or unwritable.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let result = Self::open_inner(&path, &options);
        if result.is_err() && !existed {
            // Never leave behind an empty file this attempt created.
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    fn open_inner(path: &Path, options: &SqliteOptions) -> Result<Self, OpenError> {
        let lock = open::lock_file(path)?;
        let conn = open::open_writer(path, options)?;
        #[cfg(test)]
        if let Some(fail) = &options.fail_commits {
            // Fault injection: while the flag is set, SQLite turns every COMMIT
            // into a rollback and reports the COMMIT as failed.
            let fail = Arc::clone(fail);
            conn.commit_hook(Some(move || fail.load(std::sync::atomic::Ordering::SeqCst)))
                .map_err(|source| OpenError::Sqlite {
                    path: path.to_path_buf(),
                    step: "installing the test commit hook",
                    source,
                })?;
        }
        let readers = Readers::open(path.to_path_buf(), options.busy_timeout, options.readers)
            .map_err(|source| OpenError::Sqlite {
                path: path.to_path_buf(),
                step: "opening a read-only connection",
                source,
            })?;

        let stats = Arc::new(Stats::default());
        let stop = Arc::new(FailStop::default());
        let (sender, receiver) = mpsc::channel();
        let batch = Batching {
            ops_max: options.batch_ops_max.max(1),
            wait: options.batch_wait,
            idle: options.batch_idle,
        };
        let cache = BalanceCache::new(options.balance_cache_max).map(Arc::new);
        let overlay = options.pipeline.then(|| Arc::new(Overlay::new()));
        let writer = Writer {
            stats: Arc::clone(&stats),
            cache: cache.clone(),
            overlay: overlay.clone(),
            #[cfg(test)]
            gate: options.gate.clone(),
            #[cfg(test)]
            fail_amount: options.fail_amount.clone(),
            stop: Arc::clone(&stop),
            #[cfg(test)]
            page_limit: options.page_limit.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("pointlock-sqlite-writer".into())
            .spawn(move || writer.run(conn, &receiver, batch))
            .map_err(OpenError::Thread)?;
        Ok(Self {
            path: path.to_path_buf(),
            sender: Mutex::new(Some(sender)),
            queue: Arc::new(Semaphore::new(options.queue_ops_max.max(1))),
            queue_ops_max: options.queue_ops_max.max(1),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(readers),
            stats,
            stop,
            cache,
            overlay,
            negative_control: options.negative_control,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes handed to the writer and not yet answered (queued or in the
    /// batch being written).
    pub fn queued_ops(&self) -> usize {
        self.queue_ops_max
            .saturating_sub(self.queue.available_permits())
    }

    /// Whether changes are pipelined ([`SqliteOptions::pipeline`]).
    pub fn is_pipelined(&self) -> bool {
        self.overlay.is_some()
    }

    /// Users with changes sequenced and not yet durable (pipelined only).
    pub fn sequenced_users(&self) -> usize {
        self.overlay.as_deref().map_or(0, Overlay::users)
    }

    /// How commits have been batched so far.
    pub fn stats(&self) -> CommitStats {
        self.stats.snapshot(self.is_stopped())
    }

    /// Whether the store has failed stop after a failed COMMIT: it refuses every
    /// change with a `STORE_UNAVAILABLE` error until the process restarts; reads
    /// go on (see the [module docs](self)).
    pub fn is_stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Stop taking changes, let the writer commit and answer everything already
    /// queued, and wait for it to finish. Later commits fail with a store error;
    /// reads fail too. Blocks the calling thread; idempotent; also run on drop.
    pub fn close(&self) {
        // Readers first: the writer's connection, closing last, checkpoints the
        // log into the database file and removes the -wal file.
        self.readers.close();
        self.queue.close();
        drop(
            self.sender
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            if writer.join().is_err() {
                tracing::error!(path = %self.path.display(), "the SQLite writer thread panicked");
            }
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl PointStore for SqliteStore {
    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let answer = if self.stop.is_stopped() {
            Err(writer::unavailable())
        } else if self.readers.is_closed() {
            Err(StoreError::with_kind(
                StoreErrorKind::Unavailable,
                "the SQLite store is closed",
            ))
        } else {
            match &*self.writer.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(writer) if !writer.is_finished() => Ok(()),
                _ => Err(StoreError::with_kind(
                    StoreErrorKind::Unavailable,
                    "the SQLite writer thread is not running",
                )),
            }
        };
        Box::pin(std::future::ready(answer))
    }

    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        Box::pin(async move {
            if self.readers.is_closed() {
                return Err(StoreError::new("the SQLite store is closed"));
            }
            if self.negative_control == Some(NegativeControl::DirtyReads) {
                if let Some(Seen::Sequenced(point, _)) =
                    self.overlay.as_deref().map(|o| o.point(id))
                {
                    return Ok(Some(point));
                }
            }
            let miss = match self.cache.as_deref().map(|cache| cache.get(id)) {
                Some(Ok(cached)) => return Ok(Some(cached)),
                Some(Err(miss)) => Some(miss),
                None => None,
            };
            let row = self
                .readers
                .read(move |conn| {
                    conn.prepare_cached(SELECT_POINT)?
                        .query_row(params![to_i64(id.get())], |row| {
                            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                        })
                        .optional()
                })
                .await?;
            let found = row
                .map(|(point, update_millis)| {
                    Ok(UserPoint {
                        id,
                        point: u64::try_from(point)
                            .map_err(|_| corrupt_row(STORE, "negative balance", id))?,
                        update_millis,
                    })
                })
                .transpose()?;
            if let (Some(cache), Some(miss), Some(found)) = (self.cache.as_deref(), miss, &found) {
                cache.fill(found, miss);
            }
            Ok(found)
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .readers
                .read(move |conn| {
                    let mut stmt = conn.prepare_cached(SELECT_HISTORIES)?;
                    let rows = stmt.query_map(params![to_i64(id.get())], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    })?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })
                .await?;
            rows.into_iter()
                .map(|(hid, kind, amount, time_millis)| {
                    history_row(STORE, id, (hid, kind.as_str(), amount, time_millis))
                })
                .collect()
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        Box::pin(async move {
            match self.overlay.as_deref() {
                // Through the sequenced state, its guard kept until answered.
                Some(overlay) => self.sequence_in(overlay, change).await?.await,
                None => self.commit_durable(change).await,
            }
        })
    }

    fn pipelined(&self) -> Option<&dyn PipelinedStore> {
        self.overlay
            .is_some()
            .then_some(self as &dyn PipelinedStore)
    }

    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>> {
        let key = key.clone();
        Box::pin(async move {
            let lookup = key.clone();
            let row = self
                .readers
                .read(move |conn| {
                    conn.prepare_cached(SELECT_KEY)?
                        .query_row(params![to_i64(id.get()), lookup.as_str()], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, i64>(1)?,
                                row.get::<_, i64>(2)?,
                                row.get::<_, i64>(3)?,
                            ))
                        })
                        .optional()
                })
                .await?;
            row.map(|(kind, amount, point, time)| {
                idempotency_row(STORE, id, &key, (kind.as_str(), amount, point, time))
            })
            .transpose()
        })
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            if self.stop.is_stopped() {
                return Err(writer::unavailable());
            }
            let (reply, answer) = oneshot::channel();
            self.send(Work::Sweep(Sweep {
                expired_before,
                limit,
                reply,
            }))?;
            answer
                .await
                .map_err(|_| StoreError::new("the SQLite writer stopped before answering"))?
        })
    }
}

impl PipelinedStore for SqliteStore {
    fn sequence(&self, change: Unsequenced) -> BoxFuture<'_, Result<Pending<'_>, StoreError>> {
        Box::pin(async move {
            let Some(overlay) = self.overlay.as_deref() else {
                return Err(StoreError::new(
                    "this SQLite store is not pipelined: commit the change instead",
                ));
            };
            self.sequence_in(overlay, change).await
        })
    }

    fn sequenced_point(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<SequencedRead<'_, Option<UserPoint>>, StoreError>> {
        Box::pin(sequenced::read(
            self.overlay.as_deref(),
            move |o| o.point(id),
            move || self.user_point(id),
            move |mark| self.settle(id, mark),
        ))
    }

    fn sequenced_idempotency_record<'a>(
        &'a self,
        id: UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<SequencedRead<'a, Option<IdempotencyRecord>>, StoreError>> {
        Box::pin(sequenced::read(
            self.overlay.as_deref(),
            move |o| o.key(id, key),
            move || self.idempotency_record(id, key),
            move |mark| self.settle(id, mark),
        ))
    }
}

impl SqliteStore {
    /// Commit `change` and answer once it is durable, keeping its guard until
    /// then (the store without pipelining).
    async fn commit_durable(&self, change: Change) -> Result<Committed, StoreError> {
        // The change, and the user's guard in it, go to the writer, which keeps
        // them until it has answered: a caller that stops waiting cannot
        // release its user while its change may still be committed.
        let queued = self.queue_place().await?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            change,
            reply,
            _queued: queued,
        };
        self.send(Work::Change(job))?;
        answer
            .await
            .map_err(|_| StoreError::new("the SQLite writer stopped before answering"))?
    }

    /// Check `change` against the sequenced state, hand it to the writer and
    /// make its result the sequenced state (see `sequenced.rs`); resolve with
    /// its outcome, to await. From here the change commits or is refused
    /// whatever happens to the caller.
    async fn sequence_in(
        &self,
        overlay: &Overlay,
        change: impl Sequencing,
    ) -> Result<Pending<'_>, StoreError> {
        let queued = self.queue_place().await?;
        let (reply, answer) = oneshot::channel();
        let early = (self.negative_control == Some(NegativeControl::AnswerAtSequencing))
            .then(|| change.change().committed(0));
        overlay.sequence(change, |change| {
            self.send(Work::Change(Job {
                change,
                reply,
                _queued: queued,
            }))
        })?;
        if let Some(early) = early {
            // Negative control: the answer before the change is durable.
            return Ok(Box::pin(std::future::ready(Ok(early))));
        }
        Ok(Box::pin(async move {
            answer
                .await
                .map_err(|_| StoreError::new("the SQLite writer stopped before answering"))?
        }))
    }

    /// Resolve once everything a read of user `id` marked `mark` showed is
    /// durable; fail if some of it failed (see `sequenced.rs`).
    fn settle(&self, id: UserId, mark: ReadMark) -> BoxFuture<'_, Result<(), StoreError>> {
        if self.negative_control == Some(NegativeControl::DirtyReads) {
            return Box::pin(std::future::ready(Ok(())));
        }
        Box::pin(sequenced::settle(
            self.overlay.as_deref(),
            id,
            mark,
            move || async move {
                self.stats
                    .barriers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (reply, answer) = oneshot::channel();
                self.send(Work::Barrier(Barrier {
                    user: id,
                    mark,
                    reply,
                }))?;
                answer
                    .await
                    .map_err(|_| StoreError::new("the SQLite writer stopped before answering"))?
            },
        ))
    }

    /// A place in the writer's bounded queue (waiting while it is full);
    /// refused once the store has failed stop or is closed.
    async fn queue_place(&self) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        if self.stop.is_stopped() {
            return Err(writer::unavailable());
        }
        Arc::clone(&self.queue)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::new("the SQLite store is closed"))
    }

    /// Hand `work` to the writer. No await between taking the sender and
    /// sending: close() never waits on a sender held by a suspended caller.
    fn send(&self, work: Work) -> Result<(), StoreError> {
        let sent = match &*self.sender.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(sender) => sender.send(work).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(StoreError::new("the SQLite store is closed"))
        }
    }
}

/// The store's name in errors about corrupt rows.
const STORE: &str = "SQLite";
