//! [`Clock`]: where the lock reads the time it measures waits with.
//!
//! The lock never reads a clock itself (`std::time::Instant` panics on
//! `wasm32-unknown-unknown`): [`KeyedLock::with_clock`](crate::KeyedLock::with_clock)
//! takes one, and [`KeyedLock::new`](crate::KeyedLock::new) measures nothing.

/// A monotonic time source: wait times in [`LockMetrics`](crate::LockMetrics)
/// are differences of two readings.
///
/// `Send + Sync` on native targets, so a lock with a clock can be shared between
/// threads; no bound on wasm32, where a clock may wrap a JavaScript object.
#[cfg(not(target_arch = "wasm32"))]
pub trait Clock: Send + Sync {
    /// A monotonic reading in nanoseconds from an arbitrary origin.
    fn monotonic_nanos(&self) -> u64;
}

/// A monotonic time source: wait times in [`LockMetrics`](crate::LockMetrics)
/// are differences of two readings.
///
/// `Send + Sync` on native targets, so a lock with a clock can be shared between
/// threads; no bound on wasm32, where a clock may wrap a JavaScript object.
#[cfg(target_arch = "wasm32")]
pub trait Clock {
    /// A monotonic reading in nanoseconds from an arbitrary origin.
    fn monotonic_nanos(&self) -> u64;
}

/// A shared clock reads as the clock it shares (this is how
/// [`KeyedLock::with_clock`](crate::KeyedLock::with_clock) keeps an
/// `Arc<dyn YourClock>`).
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn monotonic_nanos(&self) -> u64 {
        (**self).monotonic_nanos()
    }
}
