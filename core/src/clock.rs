//! Injected time. The core never reads a clock itself (`std::time::Instant` panics on
//! `wasm32-unknown-unknown`), so every face supplies one.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::sync::{MaybeSend, MaybeSync};

/// A source of time: wall-clock time here, and the monotonic reading that measures
/// lock waits from its supertrait [`keylock::Clock`] (implement both).
pub trait Clock: keylock::Clock + MaybeSend + MaybeSync {
    /// Wall-clock milliseconds since the Unix epoch: stamps `updateMillis` and `timeMillis`.
    fn now_millis(&self) -> i64;
}

/// A clock that moves only when told to: deterministic tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicI64,
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `millis` wall time and 0 monotonic time.
    pub fn new(millis: i64) -> Self {
        Self {
            millis: AtomicI64::new(millis),
            nanos: AtomicU64::new(0),
        }
    }

    /// Step the wall-clock reading alone by `millis` (negative: back), as an
    /// operator or NTP stepping the system clock would; the monotonic reading
    /// does not move.
    pub fn step_wall_millis(&self, millis: i64) {
        self.millis.fetch_add(millis, Ordering::Relaxed);
    }

    /// Move both readings forward by `millis` milliseconds.
    pub fn advance_millis(&self, millis: i64) {
        self.millis.fetch_add(millis, Ordering::Relaxed);
        let nanos = u64::try_from(millis).unwrap_or(0).saturating_mul(1_000_000);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.millis.load(Ordering::Relaxed)
    }
}

impl keylock::Clock for ManualClock {
    fn monotonic_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }
}
