//! [`SqliteStore`]: the durable store. An acknowledged change is on disk.
//!
//! One SQLite file (bundled SQLite, no system library) in WAL mode with
//! `synchronous=FULL`: every commit fsyncs the write-ahead log before it returns,
//! so a change the caller was told about survives `kill -9` and power loss (to the
//! extent the disk honours fsync).
//!
//! # Writes: one writer thread, group commit
//!
//! [`commit`](PointStore::commit) queues the change on a bounded channel and
//! waits for its answer. A single writer thread owns the only writable
//! connection. It takes the first queued change, then everything else already
//! queued, and keeps collecting, looking at the queue every
//! [`SqliteOptions::batch_idle`], until a look finds nothing new, the batch holds
//! [`SqliteOptions::batch_ops_max`] changes, or [`SqliteOptions::batch_wait`] has
//! passed. It writes the whole batch (per change: upsert the balance, insert the
//! history row; both statements prepared once per batch) in **one**
//! transaction, commits (one fsync for the batch), updates the balance cache,
//! and only then answers each caller. Changes of different users thus share the fsync; the changes of one
//! user are never in the same batch, because the per-user lock in front lets a
//! user have one change in flight at a time.
//!
//! If a batch fails (a change does not fit, the disk is full, an I/O error), the
//! transaction is rolled back and each change of the batch is retried alone in
//! its own transaction, so one bad change does not fail innocent ones; each
//! caller gets its own result. A failed change wrote nothing.
//!
//! Cancel safety: once queued, a change is committed or refused by the writer
//! whether or not its caller still waits, so a dropped `commit` future leaves
//! all of the change or none of it. [`SqliteStore::close`] (also run on drop)
//! stops taking changes, lets the writer finish everything already queued, and
//! joins it.
//!
//! # Reads: a balance cache, and read-only connections never behind the writer
//!
//! Balances are read through a write-through cache of committed balances (at
//! most [`SqliteOptions::balance_cache_max`] of them, 30 to 60 bytes each with
//! the hash map's slack; 0 turns it off). The writer puts every committed
//! balance in it after the COMMIT and before answering the caller; a miss
//! reads SQLite and fills the entry unless the writer got there first (the race
//! is reasoned out on the private `BalanceCache`). Unknown users are not cached, so reading ids that
//! do not exist cannot fill it. A full cache shard is emptied (the next reads
//! of its users go to SQLite again). A failed commit removes its user's entry.
//! With the cache, the read before each charge and most `GET /point/{id}` cost
//! a hash-map lookup instead of a blocking-pool hand-off and a SQLite query.
//!
//! Cache misses and [`histories`](PointStore::histories) run on a small pool of
//! read-only connections in tokio's blocking pool. WAL lets them read the last
//! committed state while the writer writes. A caller is answered only after
//! its batch commits and its balance is cached, so a read issued after an
//! answer sees that change.
//!
//! # The file
//!
//! Schema changes are embedded migrations counted by `PRAGMA user_version`; the
//! file is marked with `PRAGMA application_id`. Opening fails fast, changing
//! nothing, on: a file that is not a SQLite database or fails `PRAGMA
//! quick_check`, a SQLite database of some other application, a schema newer than
//! this build knows, a file another process holds (an exclusive advisory lock on
//! the database file is taken for the store's life), or a file or directory the
//! process cannot write.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pointlock_core::{
    Amount, BoxFuture, Change, CommitStats, Committed, PointHistory, PointStore, StoreError,
    TransactionType, UserId, UserPoint,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use thiserror::Error;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// `PRAGMA application_id` of a pointlock database: "PLK1".
const APPLICATION_ID: i32 = 0x504C_4B31;

/// The embedded migrations: `MIGRATIONS[i]` takes `user_version` from `i` to `i + 1`.
/// Append only; never edit a step that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: balances, and the history with a store-wide id that never goes back
    // (AUTOINCREMENT: ids are not reused even after the newest row is deleted).
    "CREATE TABLE user_point (
        id            INTEGER PRIMARY KEY CHECK (id > 0),
        point         INTEGER NOT NULL CHECK (point >= 0),
        update_millis INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE point_history (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id     INTEGER NOT NULL CHECK (user_id > 0),
        type        TEXT    NOT NULL CHECK (type IN ('CHARGE', 'USE')),
        amount      INTEGER NOT NULL CHECK (amount > 0),
        time_millis INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX point_history_by_user ON point_history (user_id, id);",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const UPSERT_POINT: &str = "INSERT INTO user_point (id, point, update_millis) VALUES (?1, ?2, ?3)
     ON CONFLICT (id) DO UPDATE SET point = excluded.point, update_millis = excluded.update_millis";
const INSERT_HISTORY: &str =
    "INSERT INTO point_history (user_id, type, amount, time_millis) VALUES (?1, ?2, ?3, ?4)";
const SELECT_POINT: &str = "SELECT point, update_millis FROM user_point WHERE id = ?1";
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

/// Why a database file could not be opened. Nothing was changed in the file.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The file could not be opened or created for writing.
    #[error("cannot open {path} for reading and writing: {source} (is the file and its directory writable by this user?)")]
    Io {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another process (or another store in this one) has the file open.
    #[error("{path} is in use by another pointlock process (its lock is held); stop that process or choose another --store file")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// Not a SQLite database, or a damaged one.
    #[error("{path} is not a valid SQLite database or is corrupt: {detail}; it was left untouched (restore it from a backup or move it away)")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// A SQLite database of some other application.
    #[error(
        "{path} is a SQLite database but not a pointlock one ({detail}); it was left untouched"
    )]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },
    /// Written by a newer pointlock.
    #[error("{path} has schema version {found}, newer than this build understands ({known}); run a newer pointlock (the file was left untouched)")]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The file's `user_version`.
        found: i64,
        /// [`SCHEMA_VERSION`].
        known: i64,
    },
    /// Any other SQLite failure while preparing the file.
    #[error("cannot use {path}: {step}: {source} (SQLite needs to create {path}-wal and {path}-shm next to it: is the directory writable?)")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// What SQLite reported.
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the SQLite writer thread: {0}")]
    Thread(io::Error),
}

/// Shards of the balance cache.
pub const CACHE_SHARDS: usize = 16;

/// The write-through cache of committed balances (see the [module docs](self)).
///
/// Invariant: once the writer has put the balance of commit `C` in the cache
/// (which it does after `C` is committed and before `C`'s caller is answered),
/// the user's entry is absent or holds `C` or a later commit, never an older
/// balance. Entries change in three ways only:
///
/// - the writer puts each committed balance, in commit order, overwriting;
/// - a reader fills an entry after a miss only if the entry is still absent and
///   no entry has left the shard since the miss (the shard's `generation` is
///   unchanged), so its SQLite read began after every removal;
/// - entries leave (a full shard is emptied; a user is forgotten after a failed
///   commit) only with the generation bumped.
///
/// A fill that finds the entry present loses to it. A fill that finds it absent
/// with an unchanged generation read SQLite after the last removal, which came
/// after every commit the writer had put before it, so it read those commits or
/// later ones; any commit it missed is still to be put by the writer, which
/// overwrites.
struct BalanceCache {
    shards: Box<[Mutex<CacheShard>]>,
    shard_max: usize,
}

#[derive(Default)]
struct CacheShard {
    /// Balance and `update_millis` by user.
    balances: HashMap<UserId, (u64, i64)>,
    /// Bumped whenever entries leave the shard.
    generation: u64,
}

impl CacheShard {
    fn make_room(&mut self, shard_max: usize) {
        if self.balances.len() >= shard_max {
            self.balances.clear();
            self.generation += 1;
        }
    }
}

/// A cache miss: the generation of the shard when it missed.
#[derive(Clone, Copy)]
struct Miss(u64);

impl BalanceCache {
    /// A cache of at most `max` balances; `None` when `max` is 0.
    fn new(max: usize) -> Option<Self> {
        (max > 0).then(|| Self {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            shard_max: max.div_ceil(CACHE_SHARDS),
        })
    }

    fn shard(&self, id: UserId) -> MutexGuard<'_, CacheShard> {
        // usize is at least 32 bits wide, so the remainder converts losslessly.
        let index = (id.get() % CACHE_SHARDS as u64) as usize;
        // Each critical section is one map operation: a panic cannot leave the
        // shard half-changed.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: UserId) -> Result<UserPoint, Miss> {
        let shard = self.shard(id);
        match shard.balances.get(&id) {
            Some(&(point, update_millis)) => Ok(UserPoint {
                id,
                point,
                update_millis,
            }),
            None => Err(Miss(shard.generation)),
        }
    }

    /// The writer, after a commit and before answering it: the user's newest balance.
    fn put(&self, point: &UserPoint) {
        let mut shard = self.shard(point.id);
        if !shard.balances.contains_key(&point.id) {
            shard.make_room(self.shard_max);
        }
        shard
            .balances
            .insert(point.id, (point.point, point.update_millis));
    }

    /// A reader, after `miss`: the balance it then read from SQLite, kept only if
    /// the entry is still absent and nothing left the shard since the miss.
    fn fill(&self, point: &UserPoint, miss: Miss) {
        let mut shard = self.shard(point.id);
        if shard.generation != miss.0 || shard.balances.contains_key(&point.id) {
            return;
        }
        shard.make_room(self.shard_max);
        shard
            .balances
            .insert(point.id, (point.point, point.update_millis));
    }

    /// The writer, after a failed commit: SQLite alone knows the user's balance.
    fn forget(&self, id: UserId) {
        let mut shard = self.shard(id);
        shard.balances.remove(&id);
        shard.generation += 1;
    }
}

/// A change on its way to the writer, with the caller's answer channel.
struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
    /// A place in the bounded queue, given back once the job is answered.
    _queued: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    ops: AtomicU64,
    batch_ops_max: AtomicU64,
    batches_retried: AtomicU64,
    ops_failed: AtomicU64,
    batch_ops_log2: [AtomicU64; 9],
}

impl Stats {
    fn record_batch(&self, ops: usize) {
        let ops = ops as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.batch_ops_max.fetch_max(ops, Ordering::Relaxed);
        let bucket = (ops.max(1).ilog2() as usize).min(self.batch_ops_log2.len() - 1);
        self.batch_ops_log2[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> CommitStats {
        CommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            batch_ops_max: self.batch_ops_max.load(Ordering::Relaxed),
            batches_retried: self.batches_retried.load(Ordering::Relaxed),
            ops_failed: self.ops_failed.load(Ordering::Relaxed),
            batch_ops_log2: std::array::from_fn(|i| self.batch_ops_log2[i].load(Ordering::Relaxed)),
        }
    }
}

/// The read-only connections, opened on demand up to the permit count.
struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // Push and pop only: a panic cannot leave the vector half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        Ok(conn)
    }
}

/// The durable SQLite store. See the [module docs](self).
pub struct SqliteStore {
    path: PathBuf,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    queue: Arc<Semaphore>,
    queue_ops_max: usize,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Readers>,
    stats: Arc<Stats>,
    cache: Option<Arc<BalanceCache>>,
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
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| OpenError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        match fs4::FileExt::try_lock(&lock) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(fs4::TryLockError::Error(source)) => {
                return Err(OpenError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let conn = open_writer(path, options)?;
        let readers = Arc::new(Readers {
            path: path.to_path_buf(),
            busy_timeout: options.busy_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(options.readers.max(1))),
        });
        // One reader now: a file readers cannot open fails at start, not later.
        let first = readers.open().map_err(|source| OpenError::Sqlite {
            path: path.to_path_buf(),
            step: "opening a read-only connection",
            source,
        })?;
        readers.idle().push(first);

        let stats = Arc::new(Stats::default());
        let (sender, receiver) = mpsc::channel();
        let batch = Batching {
            ops_max: options.batch_ops_max.max(1),
            wait: options.batch_wait,
            idle: options.batch_idle,
        };
        let cache = BalanceCache::new(options.balance_cache_max).map(Arc::new);
        let writer = Writer {
            stats: Arc::clone(&stats),
            cache: cache.clone(),
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
            readers,
            stats,
            cache,
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

    /// How commits have been batched so far.
    pub fn stats(&self) -> CommitStats {
        self.stats.snapshot()
    }

    /// Stop taking changes, let the writer commit and answer everything already
    /// queued, and wait for it to finish. Later commits fail with a store error;
    /// reads fail too. Blocks the calling thread; idempotent; also run on drop.
    pub fn close(&self) {
        // Readers first: the writer's connection, closing last, checkpoints the
        // log into the database file and removes the -wal file.
        self.readers.permits.close();
        self.readers.idle().clear();
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

    /// Run `query` on a read-only connection in the blocking pool.
    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::new("the SQLite store is closed"))?;
        let readers = Arc::clone(&self.readers);
        // The connection goes back to the pool inside the task, so a caller that
        // stops waiting cannot lose it.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let popped = readers.idle().pop();
            let conn = match popped {
                Some(conn) => conn,
                None => readers.open()?,
            };
            let result = query(&conn);
            readers.idle().push(conn);
            result
        });
        match task.await {
            Ok(result) => result.map_err(|e| StoreError::new(format!("SQLite read failed: {e}"))),
            Err(e) => Err(StoreError::new(format!("SQLite read task failed: {e}"))),
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl PointStore for SqliteStore {
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        Box::pin(async move {
            if self.readers.permits.is_closed() {
                return Err(StoreError::new("the SQLite store is closed"));
            }
            let miss = match self.cache.as_deref().map(|cache| cache.get(id)) {
                Some(Ok(cached)) => return Ok(Some(cached)),
                Some(Err(miss)) => Some(miss),
                None => None,
            };
            let row = self
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
                            .map_err(|_| corrupt_row("negative balance", id))?,
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
                    Ok(PointHistory {
                        id: u64::try_from(hid).map_err(|_| corrupt_row("history id", id))?,
                        user_id: id,
                        kind: match kind.as_str() {
                            "CHARGE" => TransactionType::Charge,
                            "USE" => TransactionType::Use,
                            _ => return Err(corrupt_row("history type", id)),
                        },
                        amount: Amount::from_i64(amount)
                            .map_err(|_| corrupt_row("history amount", id))?,
                        time_millis,
                    })
                })
                .collect()
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        Box::pin(async move {
            let queued = Arc::clone(&self.queue)
                .acquire_owned()
                .await
                .map_err(|_| StoreError::new("the SQLite store is closed"))?;
            let (reply, answer) = oneshot::channel();
            let job = Job {
                change,
                reply,
                _queued: queued,
            };
            // No await between taking the sender and sending: close() never waits
            // on a sender held by a suspended caller.
            let sent = match &*self.sender.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(sender) => sender.send(job).is_ok(),
                None => false,
            };
            if !sent {
                return Err(StoreError::new("the SQLite store is closed"));
            }
            answer
                .await
                .map_err(|_| StoreError::new("the SQLite writer stopped before answering"))?
        })
    }

    fn commit_stats(&self) -> Option<CommitStats> {
        Some(self.stats())
    }
}

/// Ids, amounts and balances are at most `2^63 - 1` (checked by their types).
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn corrupt_row(what: &str, id: UserId) -> StoreError {
    StoreError::new(format!(
        "corrupt row in the SQLite store: {what} of user {id}"
    ))
}

/// Open the writable connection and bring the file to [`SCHEMA_VERSION`]. The
/// file is only read until it is known to be a pointlock database this build
/// understands (or a new, empty one).
fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, OpenError> {
    let sqlite = |step: &'static str| {
        move |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                OpenError::Corrupt {
                    path: path.to_path_buf(),
                    detail: source.to_string(),
                }
            }
            _ => OpenError::Sqlite {
                path: path.to_path_buf(),
                step,
                source,
            },
        }
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite("opening the database"))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(sqlite("setting the busy timeout"))?;

    // Read-only checks first.
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite("reading the schema version"))?;
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(sqlite("reading the application id"))?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(sqlite("reading the schema"))?;
    let foreign = |detail: String| OpenError::Foreign {
        path: path.to_path_buf(),
        detail,
    };
    if application_id != APPLICATION_ID && (application_id != 0 || objects > 0) {
        return Err(foreign(format!(
            "application_id {application_id:#x}, {objects} schema objects"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if options.quick_check && objects > 0 {
        let started = Instant::now();
        let report: Vec<String> = conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(sqlite("checking integrity"))?;
        if report != ["ok"] {
            return Err(OpenError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("PRAGMA quick_check: {}", report.join("; ")),
            });
        }
        tracing::debug!(elapsed = ?started.elapsed(), "PRAGMA quick_check: ok");
    }

    // Now the file is ours: WAL, fsync on every commit, migrations.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sqlite("switching to WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Sqlite {
            path: path.to_path_buf(),
            step: "switching to WAL mode",
            source: rusqlite::Error::InvalidQuery,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite("setting synchronous=FULL"))?;
    migrate(&conn, version).map_err(sqlite("migrating the schema"))?;
    Ok(conn)
}

/// Apply the migrations after `from`, each in its own transaction with its
/// `user_version` bump.
fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    let from = usize::try_from(from).unwrap_or(0);
    for (index, step) in MIGRATIONS.iter().enumerate().skip(from) {
        let to = index + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             {step};
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {to};
             COMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
        tracing::info!(version = to, "SQLite schema migrated");
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Batching {
    ops_max: usize,
    wait: Duration,
    idle: Duration,
}

/// What the writer thread shares with the store.
struct Writer {
    stats: Arc<Stats>,
    cache: Option<Arc<BalanceCache>>,
}

impl Writer {
    /// The writer thread: batch, write, commit, answer; until the channel closes
    /// and everything queued has been answered.
    fn run(self, mut conn: Connection, jobs: &mpsc::Receiver<Job>, batching: Batching) {
        let mut batch = Vec::with_capacity(batching.ops_max);
        while let Ok(first) = jobs.recv() {
            batch.push(first);
            collect(jobs, &mut batch, batching);
            self.commit_batch(&mut conn, &mut batch);
        }
    }

    /// Commit `batch` in one transaction and answer every job; on failure, retry
    /// each change alone so innocent changes still commit.
    fn commit_batch(&self, conn: &mut Connection, batch: &mut Vec<Job>) {
        self.stats.record_batch(batch.len());
        let changes: Vec<Change> = batch.iter().map(|job| job.change).collect();
        match write(conn, &changes) {
            Ok(committed) => {
                for (job, committed) in batch.drain(..).zip(committed) {
                    self.answer(job, Ok(committed));
                }
            }
            Err(error) if batch.len() == 1 => {
                for job in batch.drain(..) {
                    self.answer(job, Err(error.clone()));
                }
            }
            Err(error) => {
                self.stats.batches_retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, ops = batch.len(), "SQLite batch failed; retrying each change alone");
                for job in batch.drain(..) {
                    let result = write(conn, std::slice::from_ref(&job.change))
                        .map(|mut committed| committed.remove(0));
                    self.answer(job, result);
                }
            }
        }
    }

    /// Bring the cache up to date with `result`, then answer the job's caller.
    fn answer(&self, job: Job, result: Result<Committed, StoreError>) {
        match &result {
            Ok(committed) => {
                if let Some(cache) = &self.cache {
                    cache.put(&committed.user_point);
                }
            }
            Err(error) => {
                if let Some(cache) = &self.cache {
                    cache.forget(job.change.user_id);
                }
                self.stats.ops_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, user = %job.change.user_id, "SQLite commit failed; nothing was written");
            }
        }
        let _ = job.reply.send(result);
    }
}

/// Add queued jobs to `batch` until it is full, the batch wait is over, or a
/// pause of the idle time brought nothing new.
///
/// The writer sleeps between looks at the queue instead of blocking on it:
/// a blocked receiver is woken by every send, and those wake-ups (one context
/// switch per change) cost more CPU than the pauses on a small machine.
fn collect(jobs: &mpsc::Receiver<Job>, batch: &mut Vec<Job>, batching: Batching) {
    let deadline = Instant::now() + batching.wait;
    let mut paused = false;
    loop {
        let before = batch.len();
        while batch.len() < batching.ops_max {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let quiet = paused && batch.len() == before;
        if batch.len() >= batching.ops_max || left.is_zero() || quiet {
            return;
        }
        std::thread::sleep(batching.idle.min(left));
        paused = true;
    }
}

/// Write `changes` in one transaction: all committed, or (on any error) none.
fn write(conn: &mut Connection, changes: &[Change]) -> Result<Vec<Committed>, StoreError> {
    let failed = |e: rusqlite::Error| StoreError::new(format!("SQLite commit failed: {e}"));
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    let mut committed = Vec::with_capacity(changes.len());
    {
        // Prepared once per batch (and kept by the connection between batches).
        let mut statements = Statements {
            upsert_point: tx.prepare_cached(UPSERT_POINT).map_err(failed)?,
            insert_history: tx.prepare_cached(INSERT_HISTORY).map_err(failed)?,
        };
        for change in changes {
            committed.push(apply(&tx, &mut statements, change)?);
        }
    }
    // Dropping `tx` on an early return rolls back.
    tx.commit().map_err(failed)?;
    Ok(committed)
}

/// The writer's statements, prepared for one transaction.
struct Statements<'tx> {
    upsert_point: rusqlite::CachedStatement<'tx>,
    insert_history: rusqlite::CachedStatement<'tx>,
}

/// One change inside the open transaction: the balance, then its history row.
fn apply(
    tx: &Connection,
    statements: &mut Statements<'_>,
    change: &Change,
) -> Result<Committed, StoreError> {
    let failed = |e: rusqlite::Error| StoreError::new(format!("SQLite write failed: {e}"));
    let point = i64::try_from(change.point).map_err(|_| {
        StoreError::new(format!(
            "balance {} does not fit the SQLite store (at most 9223372036854775807)",
            change.point
        ))
    })?;
    let user = to_i64(change.user_id.get());
    statements
        .upsert_point
        .execute(params![user, point, change.time_millis])
        .map_err(failed)?;
    statements
        .insert_history
        .execute(params![
            user,
            change.kind.as_str(),
            to_i64(change.amount.get()),
            change.time_millis
        ])
        .map_err(failed)?;
    let id = u64::try_from(tx.last_insert_rowid())
        .map_err(|_| StoreError::new("SQLite assigned a negative history id"))?;
    Ok(Committed {
        user_point: UserPoint {
            id: change.user_id,
            point: change.point,
            update_millis: change.time_millis,
        },
        history: PointHistory {
            id,
            user_id: change.user_id,
            kind: change.kind,
            amount: change.amount,
            time_millis: change.time_millis,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pointlock_core::{Amount, Change, PointStore, TransactionType, UserId};

    use super::*;

    fn change(user: u64, point: u64, amount: u64) -> Change {
        Change {
            user_id: UserId::new(user).unwrap(),
            point,
            kind: TransactionType::Charge,
            amount: Amount::new(amount).unwrap(),
            time_millis: 1_000 + i64::try_from(user).unwrap(),
        }
    }

    fn id(raw: u64) -> UserId {
        UserId::new(raw).unwrap()
    }

    /// Options whose batches close only when full (the wait is far longer than
    /// any test): batching becomes deterministic.
    /// Batches of up to `ops` changes. The writer keeps collecting until the batch
    /// is full or a 200 ms look at the queue finds nothing new: changes spawned
    /// together land in one batch even on a loaded machine (with the server's
    /// 50 µs look, a busy CI host split them and failed these tests), and a
    /// batch that fills up closes at once.
    fn batches_of(ops: usize) -> SqliteOptions {
        SqliteOptions {
            batch_ops_max: ops,
            batch_wait: Duration::from_secs(30),
            batch_idle: Duration::from_millis(200),
            ..SqliteOptions::default()
        }
    }

    fn db() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        (dir, path)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_file_gets_wal_the_schema_version_and_the_application_id() {
        let (_dir, path) = db();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store.commit(change(1, 10, 10)).await.unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let get = |pragma: &str| -> String {
            conn.query_row(&format!("PRAGMA {pragma}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
        };
        assert_eq!(get("journal_mode"), r#"Text("wal")"#);
        assert_eq!(get("user_version"), format!("Integer({SCHEMA_VERSION})"));
        assert_eq!(get("application_id"), format!("Integer({APPLICATION_ID})"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_keeps_balances_and_histories_and_ids_keep_increasing() {
        let (_dir, path) = db();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let first = store.commit(change(1, 100, 100)).await.unwrap();
        let second = store.commit(change(2, 5, 5)).await.unwrap();
        assert!(second.history.id > first.history.id);
        assert!(store.user_point(id(3)).await.unwrap().is_none());
        drop(store);

        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let point = store.user_point(id(1)).await.unwrap().unwrap();
        assert_eq!((point.point, point.update_millis), (100, 1_001));
        assert_eq!(store.histories(id(1)).await.unwrap(), vec![first.history]);
        assert_eq!(store.histories(id(2)).await.unwrap(), vec![second.history]);
        let third = store.commit(change(1, 150, 50)).await.unwrap();
        assert!(third.history.id > second.history.id, "ids never go back");
        let ids: Vec<u64> = store
            .histories(id(1))
            .await
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(ids, vec![first.history.id, third.history.id]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_of_different_users_share_one_transaction() {
        let (_dir, path) = db();
        let store = Arc::new(SqliteStore::open(&path, batches_of(20)).unwrap());
        let tasks: Vec<_> = (1..=20)
            .map(|user| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.commit(change(user, user, user)).await })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap().unwrap().history.id);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 20, "each change has its own history id");
        let stats = store.stats();
        assert_eq!((stats.batches, stats.ops, stats.batch_ops_max), (1, 20, 20));
        assert_eq!(stats.batch_ops_log2[4], 1, "one batch of 16..32");
        for user in 1..=20 {
            assert_eq!(
                store.user_point(id(user)).await.unwrap().unwrap().point,
                user
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_group_commit_every_change_is_its_own_transaction() {
        let (_dir, path) = db();
        let options = SqliteOptions::default().without_group_commit();
        let store = Arc::new(SqliteStore::open(&path, options).unwrap());
        let tasks: Vec<_> = (1..=10)
            .map(|user| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.commit(change(user, 1, 1)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let stats = store.stats();
        assert_eq!((stats.batches, stats.ops, stats.batch_ops_max), (10, 10, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_change_does_not_fail_the_others_in_its_batch() {
        let (_dir, path) = db();
        let store = Arc::new(SqliteStore::open(&path, batches_of(10)).unwrap());
        // User 5's balance does not fit a SQLite INTEGER: its write fails inside
        // the batch, which is then retried one change at a time.
        let tasks: Vec<_> = (1..=10)
            .map(|user| {
                let store = Arc::clone(&store);
                let point = if user == 5 { u64::MAX } else { user };
                tokio::spawn(async move { store.commit(change(user, point, 1)).await })
            })
            .collect();
        for (user, task) in (1..=10).zip(tasks) {
            let result = task.await.unwrap();
            if user == 5 {
                let error = result.unwrap_err();
                assert!(error.message().contains("does not fit"), "{error}");
            } else {
                assert_eq!(result.unwrap().user_point.point, user);
            }
        }
        let stats = store.stats();
        assert_eq!(
            (stats.batches, stats.batches_retried, stats.ops_failed),
            (1, 1, 1)
        );
        assert!(
            store.user_point(id(5)).await.unwrap().is_none(),
            "nothing of user 5"
        );
        assert!(store.histories(id(5)).await.unwrap().is_empty());
        for user in (1..=10).filter(|u| *u != 5) {
            assert_eq!(
                store.user_point(id(user)).await.unwrap().unwrap().point,
                user
            );
            assert_eq!(store.histories(id(user)).await.unwrap().len(), 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_do_not_wait_for_the_writer() {
        let (_dir, path) = db();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store.commit(change(1, 7, 7)).await.unwrap();
        drop(store);
        let store = Arc::new(SqliteStore::open(&path, batches_of(2)).unwrap());
        // The writer now holds a lone change, waiting (a 200 ms look) for more.
        let pending = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.commit(change(2, 3, 3)).await })
        };
        let read = tokio::time::timeout(Duration::from_secs(10), store.user_point(id(1)));
        assert_eq!(read.await.unwrap().unwrap().map(|p| p.point), Some(7));
        // The second change completes the batch.
        store.commit(change(3, 4, 4)).await.unwrap();
        assert_eq!(pending.await.unwrap().unwrap().user_point.point, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_commits_what_is_queued_and_refuses_the_rest() {
        let (_dir, path) = db();
        let store = Arc::new(SqliteStore::open(&path, batches_of(1_000)).unwrap());
        let tasks: Vec<_> = (1..=50)
            .map(|user| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.commit(change(user, 9, 9)).await })
            })
            .collect();
        // The batch would keep collecting toward 1000 changes; closing ends it.
        let closing = Arc::clone(&store);
        tokio::task::spawn_blocking(move || closing.close())
            .await
            .unwrap();
        let mut answered = Vec::new();
        for (user, task) in (1..=50).zip(tasks) {
            match task.await.unwrap() {
                Ok(_) => answered.push(user),
                Err(error) => assert!(error.message().contains("closed"), "{error}"),
            }
        }
        assert!(store.commit(change(99, 1, 1)).await.is_err());
        drop(store);
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        for user in 1..=50 {
            let found = store.user_point(id(user)).await.unwrap().is_some();
            assert_eq!(
                found,
                answered.contains(&user),
                "user {user}: all or nothing"
            );
        }
    }

    fn balance(user: u64, point: u64) -> UserPoint {
        UserPoint {
            id: id(user),
            point,
            update_millis: 0,
        }
    }

    #[test]
    fn a_fill_racing_a_commit_never_caches_the_older_balance() {
        let cache = BalanceCache::new(1_000).unwrap();
        // A reader misses, the writer commits 20 and puts it, then the reader
        // fills the 10 it read before that commit: the 20 stays.
        let miss = cache.get(id(1)).unwrap_err();
        cache.put(&balance(1, 20));
        cache.fill(&balance(1, 10), miss);
        assert_eq!(cache.get(id(1)).map(|p| p.point).ok(), Some(20));

        // Same, but the shard is emptied between the put and the fill: the fill
        // missed before the emptying, so it is dropped (the next read goes to SQLite).
        let miss = cache.get(id(2)).unwrap_err();
        cache.put(&balance(2, 20));
        cache.forget(id(2));
        cache.fill(&balance(2, 10), miss);
        assert!(cache.get(id(2)).is_err(), "the older balance was cached");

        // A fill with nothing in between is kept; the writer's next put overwrites it.
        let miss = cache.get(id(3)).unwrap_err();
        cache.fill(&balance(3, 10), miss);
        assert_eq!(cache.get(id(3)).map(|p| p.point).ok(), Some(10));
        cache.put(&balance(3, 30));
        assert_eq!(cache.get(id(3)).map(|p| p.point).ok(), Some(30));
    }

    #[test]
    fn a_full_cache_shard_is_emptied_and_stays_bounded() {
        let cache = BalanceCache::new(CACHE_SHARDS * 4).unwrap();
        let user_in_shard_0 = |i: u64| (i + 1) * CACHE_SHARDS as u64;
        let miss = cache.get(id(user_in_shard_0(100))).unwrap_err();
        for i in 0..4 {
            cache.put(&balance(user_in_shard_0(i), i));
        }
        assert!(cache.get(id(user_in_shard_0(0))).is_ok());
        cache.put(&balance(user_in_shard_0(4), 4));
        let lens: Vec<usize> = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().balances.len())
            .collect();
        assert_eq!(lens[0], 1, "emptied, then the new entry");
        assert!(cache.get(id(user_in_shard_0(0))).is_err());
        // A fill that missed before the emptying is dropped.
        cache.fill(&balance(user_in_shard_0(100), 1), miss);
        assert!(cache.get(id(user_in_shard_0(100))).is_err());
        assert!(BalanceCache::new(0).is_none(), "0 turns the cache off");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_after_an_answer_sees_that_commit_while_a_tiny_cache_churns() {
        // One entry per shard and 64 users: shards are emptied all the time, while
        // readers fill entries from SQLite. Every read after an acknowledged
        // commit must still see that commit (never an older cached balance).
        let (_dir, path) = db();
        let options = SqliteOptions {
            balance_cache_max: CACHE_SHARDS,
            ..SqliteOptions::default()
        };
        let store = Arc::new(SqliteStore::open(&path, options).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|seed| {
                let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut rng = fastrand_like(seed);
                    while !stop.load(Ordering::Relaxed) {
                        store.user_point(id(1 + rng() % 64)).await.unwrap();
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (1..=64)
            .map(|user| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for point in 1..=30 {
                        let committed = store.commit(change(user, point, 1)).await.unwrap();
                        assert_eq!(committed.user_point.point, point);
                        let read = store.user_point(id(user)).await.unwrap();
                        assert_eq!(read.map(|p| p.point), Some(point), "user {user}");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.await.unwrap();
        }
        for user in 1..=64 {
            assert_eq!(store.user_point(id(user)).await.unwrap().unwrap().point, 30);
        }
    }

    /// A tiny xorshift generator (no dependency).
    fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_leaves_the_cached_balance_correct() {
        let (_dir, path) = db();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store.commit(change(1, 10, 10)).await.unwrap();
        assert!(store.commit(change(1, u64::MAX, 1)).await.is_err());
        assert_eq!(store.user_point(id(1)).await.unwrap().unwrap().point, 10);
        assert_eq!(store.histories(id(1)).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_fail_after_close_even_when_cached() {
        let (_dir, path) = db();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store.commit(change(1, 10, 10)).await.unwrap();
        store.close();
        let error = store.user_point(id(1)).await.unwrap_err();
        assert!(error.message().contains("closed"), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_store_on_the_same_file_is_refused() {
        let (_dir, path) = db();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let error = SqliteStore::open(&path, SqliteOptions::default()).unwrap_err();
        assert!(matches!(error, OpenError::Locked { .. }), "{error}");
        assert!(error.to_string().contains("in use by another"), "{error}");
        drop(store);
        SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    }

    fn refused_untouched(path: &Path) -> OpenError {
        let before = std::fs::read(path).unwrap();
        let error = SqliteStore::open(path, SqliteOptions::default()).unwrap_err();
        assert_eq!(std::fs::read(path).unwrap(), before, "the file was changed");
        assert!(error.to_string().contains(&path.display().to_string()));
        error
    }

    #[test]
    fn a_garbage_file_is_refused_and_left_untouched() {
        let (_dir, path) = db();
        std::fs::write(&path, vec![0xA5_u8; 8_192]).unwrap();
        let error = refused_untouched(&path);
        assert!(matches!(error, OpenError::Corrupt { .. }), "{error}");
        assert!(!path.with_extension("db-wal").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_database_is_refused_and_left_untouched() {
        let (_dir, path) = db();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        for user in 1..=200 {
            store.commit(change(user, user, user)).await.unwrap();
        }
        drop(store); // checkpointed into the main file; no -wal left
                     // Scribble over the b-tree header of every page after the first.
        let mut bytes = std::fs::read(&path).unwrap();
        for page in bytes.chunks_mut(4_096).skip(1) {
            page[..16].fill(0xFF);
        }
        std::fs::write(&path, bytes).unwrap();
        let error = refused_untouched(&path);
        assert!(matches!(error, OpenError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("corrupt"), "{error}");
    }

    #[test]
    fn another_applications_database_is_refused() {
        let (_dir, path) = db();
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE notes (body TEXT)")
            .unwrap();
        let error = refused_untouched(&path);
        assert!(matches!(error, OpenError::Foreign { .. }), "{error}");
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_untouched() {
        let (_dir, path) = db();
        drop(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let error = refused_untouched(&path);
        assert!(matches!(error, OpenError::NewerSchema { .. }), "{error}");
        assert!(
            error.to_string().contains("newer than this build"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_directory_is_refused_and_nothing_created() {
        let (dir, _) = db();
        let path = dir.path().join("no/such/dir/p.db");
        let error = SqliteStore::open(&path, SqliteOptions::default()).unwrap_err();
        assert!(matches!(error, OpenError::Io { .. }), "{error}");
        assert!(!dir.path().join("no").exists());
    }

    #[test]
    fn an_empty_file_is_migrated_once_and_reopening_migrates_nothing() {
        // An empty (0-byte) file is a version-0 database: migrated to the current
        // version; opening it again finds nothing to do (no "table exists" error).
        let (_dir, path) = db();
        std::fs::write(&path, b"").unwrap();
        drop(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
        drop(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('user_point', 'point_history')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2);
    }
}
