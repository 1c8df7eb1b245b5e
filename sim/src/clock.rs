//! [`SimClock`]: the service's and the lock's clock read from tokio's paused
//! clock, so every timestamp, lock wait and idempotency age is simulated time.

use tokio::time::Instant;

/// Wall and monotonic time from tokio's (paused) clock. Made inside the
/// runtime of one incarnation; `wall_start_millis` carries the wall time on
/// across restarts so stored timestamps keep increasing.
#[derive(Debug)]
pub struct SimClock {
    origin: Instant,
    wall_start_millis: i64,
}

impl SimClock {
    /// A clock whose wall reading is `wall_start_millis` now. Call inside a
    /// runtime whose time is paused.
    pub fn new(wall_start_millis: i64) -> Self {
        Self {
            origin: Instant::now(),
            wall_start_millis,
        }
    }

    /// Simulated milliseconds since this clock was made.
    pub fn elapsed_millis(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

impl pointlock_core::Clock for SimClock {
    fn now_millis(&self) -> i64 {
        self.wall_start_millis.saturating_add(self.elapsed_millis())
    }
}

impl keylock::Clock for SimClock {
    fn monotonic_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}
