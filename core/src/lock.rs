//! The per-user lock: the [`keylock`] crate's [`KeyedLock`], re-exported.
//!
//! A FIFO async mutex per key, cancel safe, with owned guards and an entry only
//! while a key is held or awaited: see [`keylock`]'s documentation. The service's
//! mutations demand a [`KeyGuard`] of the user they change.

pub use keylock::{
    Acquire, KeyGuard, KeyedLock, LockMetrics, LockTimedOut, QueueFull, WAIT_BUCKETS_MICROS,
};
