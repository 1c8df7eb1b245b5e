//! [`DurationHistogram`]: a lock-free histogram of durations with fixed buckets.
//!
//! The request-duration histograms of `GET /metrics` and the stores' commit
//! durations are kept in it. Recording is two relaxed atomic adds (the bucket and
//! the sum) after at most [`DURATION_BOUNDS_NANOS`]`.len()` comparisons: no lock,
//! no allocation. (prometheus-client's own `Histogram` takes a mutex per
//! observation.) Readers take a [`HistogramSnapshot`] at scrape time; its buckets
//! and sum are read one after the other, so a snapshot taken while observations
//! land may be off by those in flight, never by more.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (inclusive, nanoseconds) of the buckets, from 50 µs to 10 s; a
/// last bucket counts everything longer. The same for every duration family, so
/// request and commit durations can be compared bucket by bucket.
pub const DURATION_BOUNDS_NANOS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The number of buckets: one per bound, then the overflow bucket.
pub const DURATION_BUCKETS: usize = DURATION_BOUNDS_NANOS.len() + 1;

/// Durations by bucket of [`DURATION_BOUNDS_NANOS`], and their sum.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    buckets: [AtomicU64; DURATION_BUCKETS],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one duration.
    pub fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(DURATION_BOUNDS_NANOS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// What has been counted so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_nanos: self.sum_nanos.load(Relaxed),
        }
    }
}

/// A [`DurationHistogram`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistogramSnapshot {
    /// Durations per bucket of [`DURATION_BOUNDS_NANOS`] (not cumulative), then
    /// the overflow bucket.
    pub counts: [u64; DURATION_BUCKETS],
    /// The sum of all durations counted.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add `other`'s counts and sum to these (histograms of the same bounds).
    pub fn add(&mut self, other: &Self) {
        for (count, more) in self.counts.iter_mut().zip(&other.counts) {
            *count += more;
        }
        self.sum_nanos += other.sum_nanos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let histogram = DurationHistogram::new();
        histogram.observe(Duration::ZERO);
        histogram.observe(Duration::from_micros(50)); // on the bound: inclusive
        histogram.observe(Duration::from_nanos(50_001));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(11));
        histogram.observe(Duration::from_secs(3_600));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts[0], 2);
        assert_eq!(snapshot.counts[1], 1);
        assert_eq!(snapshot.counts[6], 1, "3 ms: the 5 ms bucket");
        assert_eq!(snapshot.counts[DURATION_BUCKETS - 1], 2, "overflow");
        assert_eq!(snapshot.count(), 6);
        assert_eq!(
            snapshot.sum_nanos,
            50_000 + 50_001 + 3_000_000 + 11_000_000_000 + 3_600_000_000_000
        );
    }

    #[test]
    fn snapshots_add_up() {
        let (one, two) = (DurationHistogram::new(), DurationHistogram::new());
        one.observe(Duration::from_micros(10));
        two.observe(Duration::from_micros(10));
        two.observe(Duration::from_secs(1));
        let mut total = one.snapshot();
        total.add(&two.snapshot());
        assert_eq!(total.counts[0], 2);
        assert_eq!(total.counts[13], 1, "1 s: the 1 s bucket");
        assert_eq!(total.count(), 3);
        assert_eq!(total.sum_nanos, 1_000_020_000);
    }

    #[test]
    fn bounds_increase() {
        assert!(DURATION_BOUNDS_NANOS.windows(2).all(|w| w[0] < w[1]));
    }
}
