//! Why an acquisition gave up or was refused: nothing is held in either case.

use std::fmt;

/// The caller's timeout fired before the key was acquired. Nothing is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockTimedOut;

impl fmt::Display for LockTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out waiting for the key's lock")
    }
}

impl std::error::Error for LockTimedOut {}

/// The key already had as many waiters as the caller allows
/// ([`KeyedLock::lock_bounded`](super::KeyedLock::lock_bounded)). Nothing was
/// queued or held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull {
    /// The bound that was reached: waiters queued behind the holder.
    pub waiters_max: usize,
}

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the key already has {} waiters, the most allowed",
            self.waiters_max
        )
    }
}

impl std::error::Error for QueueFull {}
