//! [`SqliteOptions`]: the tuning of a [`SqliteStore`](super::SqliteStore),
//! and, with the `test-util` feature, what tests plant through it (see
//! `planted.rs`).

#[cfg(any(test, feature = "test-util"))]
use std::sync::atomic::{AtomicBool, AtomicU64};
#[cfg(any(test, feature = "test-util"))]
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use super::cache::CACHE_SHARDS;
#[cfg(any(test, feature = "test-util"))]
use super::planted::{Gate, NegativeControl};

/// Tuning of a [`SqliteStore`](super::SqliteStore). The defaults suit the server.
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
    /// The most balances kept in the write-through cache (see the [store's
    /// docs](super)); `0` turns the cache off. The cache is split in
    /// [`CACHE_SHARDS`] shards of `balance_cache_max / CACHE_SHARDS` entries; a
    /// full shard is emptied before it takes a new entry.
    pub balance_cache_max: usize,
    /// Pipelined group commit (see the [store's docs](super)): a user is
    /// released once its change is sequenced, not once it is durable, so one
    /// user's burst shares an fsync. `false`: the user stays locked until the
    /// change is durable (one fsync per change of one user).
    pub pipeline: bool,
    /// What the pipeline must never do, done on purpose: for the negative
    /// controls of the tests that must catch it. `None` in any real use.
    #[cfg(any(test, feature = "test-util"))]
    pub negative_control: Option<NegativeControl>,
    /// Fault injection: while closed, the writer waits before each batch (a
    /// deterministic "not durable yet").
    #[cfg(any(test, feature = "test-util"))]
    pub gate: Option<Arc<Gate>>,
    /// Fault injection: every change of this amount fails in a statement (as
    /// on a full disk), without failing stop.
    #[cfg(any(test, feature = "test-util"))]
    pub fail_amount: Option<Arc<AtomicU64>>,
    /// Fault injection: the writer thread panics on a change of this amount
    /// (a bug in the writer), before writing its batch.
    #[cfg(any(test, feature = "test-util"))]
    pub panic_amount: Option<u64>,
    /// Fault injection: while set, every COMMIT fails.
    #[cfg(any(test, feature = "test-util"))]
    pub fail_commits: Option<Arc<AtomicBool>>,
    /// Fault injection: the writer sets `PRAGMA max_page_count` to this before
    /// each batch (a full disk, as SQLite sees one: SQLITE_FULL).
    #[cfg(any(test, feature = "test-util"))]
    pub page_limit: Option<Arc<AtomicU64>>,
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
            #[cfg(any(test, feature = "test-util"))]
            negative_control: None,
            #[cfg(any(test, feature = "test-util"))]
            gate: None,
            #[cfg(any(test, feature = "test-util"))]
            fail_amount: None,
            #[cfg(any(test, feature = "test-util"))]
            panic_amount: None,
            #[cfg(any(test, feature = "test-util"))]
            fail_commits: None,
            #[cfg(any(test, feature = "test-util"))]
            page_limit: None,
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
