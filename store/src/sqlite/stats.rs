//! [`CommitStats`]: how the writer has batched commits so far.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::{DurationHistogram, HistogramSnapshot};

/// How a store that batches commits (group commit) has batched them so far.
///
/// `batch_ops_log2[i]` counts batches of `2^i..2^(i+1)` changes (the last bucket
/// also takes anything larger).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitStats {
    /// Transactions committed (or attempted) by the writer.
    pub batches: u64,
    /// Changes those batches carried.
    pub ops: u64,
    /// The largest batch so far.
    pub batch_ops_max: u64,
    /// Batches that failed in a statement and were retried one change at a time.
    pub batches_retried: u64,
    /// Changes that failed (each answered with its own store error).
    pub ops_failed: u64,
    /// Changes refused by their condition (the balance had changed since it was
    /// read); 0 while every writer goes through the lock.
    pub conflicts: u64,
    /// Whether the store has failed stop after a failed COMMIT (writes refused
    /// until restart).
    pub stopped: bool,
    /// Pipelined: answers computed from sequenced state (refusals, replays)
    /// that waited, behind a barrier in the writer's queue, for that state to
    /// be durable.
    pub barriers: u64,
    /// Batch sizes by powers of two: 1, 2-3, 4-7, … 256+.
    pub batch_ops_log2: [u64; 9],
    /// How long each batch's transaction took, `BEGIN IMMEDIATE` to the end of
    /// its COMMIT (the fsync included), one count per batch.
    pub commit_duration: HistogramSnapshot,
}

/// The writer's counters, shared with the store.
#[derive(Default)]
pub(super) struct Stats {
    batches: AtomicU64,
    ops: AtomicU64,
    batch_ops_max: AtomicU64,
    pub(super) batches_retried: AtomicU64,
    pub(super) ops_failed: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) barriers: AtomicU64,
    batch_ops_log2: [AtomicU64; 9],
    pub(super) commit_duration: DurationHistogram,
}

impl Stats {
    pub(super) fn record_batch(&self, ops: usize) {
        let ops = ops as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.batch_ops_max.fetch_max(ops, Ordering::Relaxed);
        let bucket = (ops.max(1).ilog2() as usize).min(self.batch_ops_log2.len() - 1);
        self.batch_ops_log2[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self, stopped: bool) -> CommitStats {
        CommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            batch_ops_max: self.batch_ops_max.load(Ordering::Relaxed),
            batches_retried: self.batches_retried.load(Ordering::Relaxed),
            ops_failed: self.ops_failed.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            stopped,
            barriers: self.barriers.load(Ordering::Relaxed),
            batch_ops_log2: std::array::from_fn(|i| self.batch_ops_log2[i].load(Ordering::Relaxed)),
            commit_duration: self.commit_duration.snapshot(),
        }
    }
}
