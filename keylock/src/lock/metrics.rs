//! What the lock counts: per-shard counters, and the snapshot [`LockMetrics`]
//! that [`KeyedLock::metrics`](super::KeyedLock::metrics) adds up from them.

use std::sync::atomic::Ordering::Relaxed;

// `std`'s, or loom's model of it in the loom tests (see `crate::sync`).
use crate::sync::AtomicU64;

/// Upper bounds (inclusive, microseconds) of the wait-time histogram's buckets; a
/// last bucket counts everything longer.
pub const WAIT_BUCKETS_MICROS: [u64; 7] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000];

/// A snapshot of a lock's gauges and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct LockMetrics {
    /// Keys currently held or awaited (entries in the table).
    pub keys: usize,
    /// Futures currently queued behind a holder.
    pub waiters: usize,
    /// Guards granted since creation.
    pub acquisitions: u64,
    /// Guards granted after waiting in a queue.
    pub contended: u64,
    /// Waits abandoned because the caller's timeout fired.
    pub timeouts: u64,
    /// Waits abandoned by dropping the future (timeouts included).
    pub cancelled: u64,
    /// Acquisitions refused at once because the key's queue was full
    /// ([`KeyedLock::lock_bounded`](super::KeyedLock::lock_bounded)).
    pub queue_full: u64,
    /// Total time contended acquisitions spent queued (0 without a clock).
    pub wait_nanos_total: u64,
    /// Longest single wait (0 without a clock).
    pub wait_nanos_max: u64,
    /// Contended waits per bucket of [`WAIT_BUCKETS_MICROS`], then the overflow bucket.
    pub wait_histogram: Vec<u64>,
}

/// One shard's counters (the acquisitions granted on the call are counted under
/// the shard's mutex instead, in `ShardState`).
#[derive(Default)]
pub(super) struct Counters {
    /// Acquisitions not counted by a shard: granted after a wait, or unsynchronized.
    pub(super) acquisitions_elsewhere: AtomicU64,
    contended: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) queue_full: AtomicU64,
    wait_nanos_total: AtomicU64,
    wait_nanos_max: AtomicU64,
    wait_buckets: [AtomicU64; WAIT_BUCKETS_MICROS.len() + 1],
}

impl Counters {
    /// Count an acquisition granted after a wait of `waited` nanoseconds (`None`:
    /// the lock has no clock).
    pub(super) fn record_contended(&self, waited: Option<u64>) {
        self.acquisitions_elsewhere.fetch_add(1, Relaxed);
        self.contended.fetch_add(1, Relaxed);
        let Some(waited) = waited else {
            return;
        };
        self.wait_nanos_total.fetch_add(waited, Relaxed);
        self.wait_nanos_max.fetch_max(waited, Relaxed);
        let micros = waited / 1_000;
        let bucket = WAIT_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(WAIT_BUCKETS_MICROS.len());
        self.wait_buckets[bucket].fetch_add(1, Relaxed);
    }

    /// Add these counters to the snapshot `m` (whose histogram has every bucket).
    pub(super) fn add_to(&self, m: &mut LockMetrics) {
        m.acquisitions += self.acquisitions_elsewhere.load(Relaxed);
        m.contended += self.contended.load(Relaxed);
        m.timeouts += self.timeouts.load(Relaxed);
        m.cancelled += self.cancelled.load(Relaxed);
        m.queue_full += self.queue_full.load(Relaxed);
        m.wait_nanos_total += self.wait_nanos_total.load(Relaxed);
        m.wait_nanos_max = m.wait_nanos_max.max(self.wait_nanos_max.load(Relaxed));
        for (sum, bucket) in m.wait_histogram.iter_mut().zip(&self.wait_buckets) {
            *sum += bucket.load(Relaxed);
        }
    }
}
