//! [`Sharded`]: per-user state split over a fixed number of mutex-guarded
//! shards, a user's shard chosen by its id. One mutex per shard instead of one
//! for all: users of different shards never wait for each other, and a
//! critical section stays one hash-map operation or a few.
//!
//! Used by the sequenced state (`sequenced.rs`) and the SQLite store's balance
//! cache.

use std::sync::{Mutex, MutexGuard, PoisonError};

use pointlock_core::UserId;

/// `count` shards of `T`, a user's shard chosen by its id.
///
/// A shard whose mutex was poisoned (a panic while it was held) is used as
/// is: every user of this type leaves a shard consistent before anything that
/// can panic, so a panic elsewhere never stops the store.
pub(crate) struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
}

impl<T: Default> Sharded<T> {
    /// `count` (at least one) empty shards.
    pub(crate) fn new(count: usize) -> Self {
        Self {
            shards: (0..count.max(1)).map(|_| Mutex::default()).collect(),
        }
    }
}

impl<T> Sharded<T> {
    /// The shard of user `id`, locked.
    pub(crate) fn lock(&self, id: UserId) -> MutexGuard<'_, T> {
        // usize is at least 32 bits wide and the count is a usize, so the
        // remainder converts losslessly.
        let index = (id.get() % self.shards.len() as u64) as usize;
        Self::guard(&self.shards[index])
    }

    /// Every shard in turn, each locked while it is looked at (not all at
    /// once: a sum over them is not a snapshot). For tests.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn each(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        self.shards.iter().map(Self::guard)
    }

    fn guard(shard: &Mutex<T>) -> MutexGuard<'_, T> {
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u64) -> UserId {
        UserId::new(raw).unwrap()
    }

    #[test]
    fn a_user_always_gets_the_same_shard_and_ids_spread_over_all() {
        let sharded: Sharded<Vec<u64>> = Sharded::new(4);
        for raw in 1..=8 {
            sharded.lock(id(raw)).push(raw);
        }
        let shards: Vec<Vec<u64>> = sharded.each().map(|shard| shard.clone()).collect();
        assert_eq!(shards, [vec![4, 8], vec![1, 5], vec![2, 6], vec![3, 7]]);
        assert_eq!(*sharded.lock(id(5)), [1, 5]);
    }

    #[test]
    fn a_poisoned_shard_is_used_as_is() {
        let sharded: Sharded<u64> = Sharded::new(2);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut shard = sharded.lock(id(1));
            *shard = 7;
            panic!("while the shard is held");
        }));
        assert_eq!(*sharded.lock(id(1)), 7);
        assert!(Sharded::<u64>::new(0).each().count() == 1, "at least one");
    }
}
