//! [`SqliteOptions`]: the tuning of a [`SqliteStore`](super::SqliteStore), and
//! the negative controls and faults the tests plant through it.

#[cfg(test)]
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

#[cfg(doc)]
use super::cache::CACHE_SHARDS;

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
    /// Fault injection for tests: while set, every COMMIT fails.
    #[cfg(any(test, feature = "test-util"))]
    pub fail_commits: Option<Arc<std::sync::atomic::AtomicBool>>,
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
            #[cfg(any(test, feature = "test-util"))]
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
