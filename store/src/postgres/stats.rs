//! [`PgStats`]: what the store has done so far, and its pool now.

use std::sync::atomic::{AtomicU64, Ordering};

use super::PostgresStore;
use crate::histogram::{DurationHistogram, HistogramSnapshot};

/// What the store has done so far, for `/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PgStats {
    /// Changes committed.
    pub commits: u64,
    /// Batch transactions committed.
    pub batches: u64,
    /// Plain commits of computed changes refused by their condition (the
    /// balance had changed since it was read). Requests are decided, never
    /// refused this way.
    pub conflicts: u64,
    /// Batches rolled back and run again because the database reported a
    /// deadlock, a serialization failure or a first row made meanwhile.
    pub retries: u64,
    /// Batches answered 503 `WRITE_CONFLICT` after the most attempts (0 unless
    /// something keeps failing them).
    pub fallbacks: u64,
    /// Requests refused because the queue was full (503 `STORE_OVERLOADED`).
    pub overloaded: u64,
    /// Requests placed and not yet answered, now.
    pub queued: usize,
    /// Commits and reads that failed (each answered with its error).
    pub errors: u64,
    /// Connections open now.
    pub pool_size: usize,
    /// Of those, idle now.
    pub pool_idle: usize,
    /// Requests waiting for a connection now.
    pub pool_waiting: usize,
    /// How long each committed batch transaction took, from BEGIN to the
    /// COMMIT's answer (not the wait for a connection).
    pub commit_duration: HistogramSnapshot,
}

/// The store's counters, shared by its clones.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) commits: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) fallbacks: AtomicU64,
    pub(super) overloaded: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) commit_duration: DurationHistogram,
}

impl PostgresStore {
    /// What the store has done so far, and the pool now.
    pub fn stats(&self) -> PgStats {
        let status = self.pool.status();
        PgStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            conflicts: self.counters.conflicts.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            fallbacks: self.counters.fallbacks.load(Ordering::Relaxed),
            overloaded: self.counters.overloaded.load(Ordering::Relaxed),
            queued: self.queue.placed(),
            errors: self.counters.errors.load(Ordering::Relaxed),
            pool_size: status.size,
            pool_idle: status.available,
            pool_waiting: status.waiting,
            commit_duration: self.counters.commit_duration.snapshot(),
        }
    }
}
