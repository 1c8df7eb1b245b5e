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
    /// Changes refused by their condition (the balance had changed since it was
    /// read, typically by another instance).
    pub conflicts: u64,
    /// Commits and reads that failed (each answered with its error).
    pub errors: u64,
    /// Connections open now.
    pub pool_size: usize,
    /// Of those, idle now.
    pub pool_idle: usize,
    /// Requests waiting for a connection now.
    pub pool_waiting: usize,
    /// How long each commit statement took (the round trip; not the wait for a
    /// connection), whatever its outcome.
    pub commit_duration: HistogramSnapshot,
}

/// The store's counters, shared by its clones.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) commits: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) commit_duration: DurationHistogram,
}

impl PostgresStore {
    /// What the store has done so far, and the pool now.
    pub fn stats(&self) -> PgStats {
        let status = self.pool.status();
        PgStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            conflicts: self.counters.conflicts.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
            pool_size: status.size,
            pool_idle: status.available,
            pool_waiting: status.waiting,
            commit_duration: self.counters.commit_duration.snapshot(),
        }
    }
}
