//! [`SqliteStore`]: the durable store. An acknowledged change is on disk.
//!
//! One SQLite file (bundled SQLite, no system library) in WAL mode with
//! `synchronous=FULL`: every commit fsyncs the write-ahead log before it returns,
//! so a change the caller was told about survives `kill -9` and power loss (to the
//! extent the disk honours fsync).
//!
//! # Writes: one writer thread, group commit, a condition per change
//!
//! [`commit`](PointStore::commit) queues the change on a bounded channel and
//! waits for its answer. A single writer thread owns the only writable
//! connection and commits changes in batches, one transaction and one fsync per
//! batch, then answers each caller. Each change is written only if the user's
//! stored balance is still the one the change was computed from; otherwise it
//! is refused as a conflict and changes nothing, and the rest of its batch
//! commits. Behind the per-user lock the condition never fires (pipelined, a
//! change computed on one that did not apply is refused before its condition
//! is looked at: the crate's `sequenced.rs`); it is the second line of
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
//! **Failures.** A statement that fails rolls its transaction back and its
//! batch is retried one change at a time. A COMMIT that fails (an I/O error, a
//! failed fsync) is never retried: the store **fails stop** until restart
//! ([`SqliteStore::is_stopped`]); the batch's callers get
//! `STORE_OUTCOME_UNKNOWN`, every later change `STORE_UNAVAILABLE`; reads go on
//! (why: `writer.rs`). A panic in the writer while it writes a batch (a
//! bug) is a fail-stop too: the callers it had not answered get
//! `STORE_OUTCOME_UNKNOWN`, the sequenced state counts their changes as
//! failed (no user's entry stays pending), and the thread goes on refusing
//! changes as a stopped store does. A caller whose writer stopped before
//! answering otherwise (shutdown) gets `STORE_OUTCOME_UNKNOWN` too.
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
//! fsync. The protocol and its failure cases are in the crate's `sequenced.rs`. Off,
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
//!
//! # Files
//!
//! - this file: [`SqliteStore`] and its [`PointStore`] methods;
//! - `options.rs`: [`SqliteOptions`];
//! - `planted.rs` (`test-util` only): the negative controls and faults tests
//!   plant through the options;
//! - `open.rs`: the file lock, the checks that refuse a bad file, WAL, migrations;
//! - `writer.rs`: the writer thread, group commit, **fail-stop**;
//! - `write.rs`: one batch's transaction and the **conditional** write of each
//!   change;
//! - `stats.rs`: [`CommitStats`];
//! - `cache.rs`: the write-through cache of committed balances;
//! - `readers.rs`: the read-only connections;
//! - `history.rs`: a page of a user's history, read on them.

mod cache;
mod history;
mod open;
mod options;
#[cfg(any(test, feature = "test-util"))]
mod planted;
mod readers;
mod stats;
mod write;
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

use pointlock_core::{
    BoxFuture, Change, Committed, IdempotencyKey, IdempotencyRecord, Pending, PipelinedStore,
    PointHistory, PointStore, ReadMark, SequencedRead, StoreError, StoreErrorKind, Unsequenced,
    UserId, UserPoint,
};
use rusqlite::{params, OptionalExtension};
use tokio::sync::{oneshot, Semaphore};

use crate::reply;
use crate::rows::{corrupt_row, idempotency_row, to_i64};
use crate::sequenced::{self, Overlay, Sequencing};
use cache::BalanceCache;
pub use cache::CACHE_SHARDS;
pub use open::{OpenError, SCHEMA_VERSION};
pub use options::SqliteOptions;
#[cfg(any(test, feature = "test-util"))]
pub use planted::{Gate, NegativeControl};
use readers::Readers;
pub use stats::CommitStats;
use stats::Stats;
use writer::{Barrier, Batching, FailStop, Job, Sweep, Work, Writer};

const SELECT_POINT: &str = "SELECT point, update_millis FROM user_point WHERE id = ?1";
const SELECT_KEY: &str = "SELECT type, amount, point, time_millis FROM idempotency
     WHERE user_id = ?1 AND key = ?2";
/// The durable SQLite store. See the [module docs](self).
pub struct SqliteStore {
    path: PathBuf,
    sender: Mutex<Option<mpsc::Sender<Work>>>,
    queue: Arc<Semaphore>,
    #[cfg(any(test, feature = "test-util"))]
    queue_ops_max: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Readers>,
    stats: Arc<Stats>,
    stop: Arc<FailStop>,
    cache: Option<Arc<BalanceCache>>,
    /// The sequenced state, when pipelined.
    overlay: Option<Arc<Overlay>>,
    #[cfg(any(test, feature = "test-util"))]
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
        #[cfg(any(test, feature = "test-util"))]
        planted::fail_commits(&conn, options, path)?;
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
            stop: Arc::clone(&stop),
            answered: Default::default(),
            #[cfg(any(test, feature = "test-util"))]
            faults: planted::WriterFaults::new(options),
        };
        let writer = std::thread::Builder::new()
            .name("pointlock-sqlite-writer".into())
            .spawn(move || writer.run(conn, &receiver, batch))
            .map_err(OpenError::Thread)?;
        Ok(Self {
            path: path.to_path_buf(),
            sender: Mutex::new(Some(sender)),
            queue: Arc::new(Semaphore::new(options.queue_ops_max.max(1))),
            #[cfg(any(test, feature = "test-util"))]
            queue_ops_max: options.queue_ops_max.max(1),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(readers),
            stats,
            stop,
            cache,
            overlay,
            #[cfg(any(test, feature = "test-util"))]
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
    #[cfg(any(test, feature = "test-util"))]
    pub fn queued_ops(&self) -> usize {
        self.queue_ops_max
            .saturating_sub(self.queue.available_permits())
    }

    /// Whether changes are pipelined ([`SqliteOptions::pipeline`]).
    pub fn is_pipelined(&self) -> bool {
        self.overlay.is_some()
    }

    /// Users with changes sequenced and not yet durable (pipelined only).
    #[cfg(any(test, feature = "test-util"))]
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
            #[cfg(any(test, feature = "test-util"))]
            if self.negative_control == Some(NegativeControl::DirtyReads) {
                if let Some(sequenced::Seen::Sequenced(point, _)) =
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
        self.histories_page(id, 0, usize::MAX)
    }

    fn histories_page(
        &self,
        id: UserId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(history::read_page(&self.readers, id, after, limit))
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
            self.writer_reply(answer).await
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
        self.writer_reply(answer).await
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
        #[cfg(any(test, feature = "test-util"))]
        let early = (self.negative_control == Some(NegativeControl::AnswerAtSequencing))
            .then(|| change.change().committed(0));
        overlay.sequence(change, |change| {
            self.send(Work::Change(Job {
                change,
                reply,
                _queued: queued,
            }))
        })?;
        #[cfg(any(test, feature = "test-util"))]
        if let Some(early) = early {
            // Negative control: the answer before the change is durable.
            return Ok(Box::pin(std::future::ready(Ok(early))));
        }
        Ok(Box::pin(self.writer_reply(answer)))
    }

    /// Resolve once everything a read of user `id` marked `mark` showed is
    /// durable; fail if some of it failed (see `sequenced.rs`).
    fn settle(&self, id: UserId, mark: ReadMark) -> BoxFuture<'_, Result<(), StoreError>> {
        #[cfg(any(test, feature = "test-util"))]
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
                self.writer_reply(answer).await
            },
        ))
    }

    /// The writer's reply. A writer that stopped before answering (it
    /// panicked) leaves the store failed stop, and the store is marked so here
    /// before the caller hears `STORE_OUTCOME_UNKNOWN`: its next request is
    /// refused, never sequenced on a state the dead batch left pending.
    async fn writer_reply<T>(&self, answer: reply::Reply<T>) -> Result<T, StoreError> {
        reply::received_else(answer, WRITER, || self.stop.stop()).await
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
/// Who answers changes, in errors.
const WRITER: &str = "the SQLite writer";
