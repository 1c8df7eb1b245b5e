//! [`KeyGuard`]: a held key, released (or handed to the next waiter) on drop.

use std::fmt;
use std::hash::Hash;

use super::shard::Shard;
use super::KeyedLock;
// `std`'s, or loom's model of it in the loom tests (see `crate::sync`).
use crate::sync::Arc;

/// Proof that a key is held. Owned: it may be moved into another task. Dropping
/// it releases the key to the next waiter in FIFO order.
#[must_use = "the key is released as soon as the guard is dropped"]
pub struct KeyGuard<K: Hash + Eq + Clone> {
    /// The key's shard (not the whole lock: see `Shard`).
    shard: Arc<Shard<K>>,
    /// The key's hash, computed once by `lock()`.
    hash: u64,
    key: K,
}

impl<K: Hash + Eq + Clone> KeyGuard<K> {
    pub(super) fn new(shard: Arc<Shard<K>>, hash: u64, key: K) -> Self {
        Self { shard, hash, key }
    }

    /// The held key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Whether this guard was granted by `lock` (or a clone of it).
    pub fn is_from(&self, lock: &KeyedLock<K>) -> bool {
        // Every lock owns its shards, so the shard identifies the lock.
        Arc::ptr_eq(&self.shard, lock.inner.shard_at(self.hash))
    }
}

impl<K: Hash + Eq + Clone> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        self.shard.release(self.hash, &self.key);
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug> fmt::Debug for KeyGuard<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyGuard").field("key", &self.key).finish()
    }
}
