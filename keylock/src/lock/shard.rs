//! A shard: one slice of the lock's table, its mutex and its counters, and the
//! step every release takes (hand the key to the next waiter, or remove it).

use std::hash::{BuildHasher, Hash};
use std::sync::PoisonError;
use std::task::Waker;

use foldhash::fast::RandomState;

#[cfg(all(test, loom))]
use super::loom_tests::{self, Bug};
use super::metrics::Counters;
use super::Entry;
use crate::clock::Clock;
// `std`'s, or loom's models of them in the loom tests (see `crate::sync`).
use crate::sync::{Mutex, MutexGuard};

/// One shard's table of `(key, entry)`. The key is hashed once per `lock()` (with
/// foldhash: SipHash made hashing most of an uncontended acquisition's cost), and
/// that hash picks the shard and finds the entry again on every later step.
pub(super) type Table<K> = hashbrown::HashTable<(K, Entry)>;

/// Independent tables, so unrelated keys rarely touch the same mutex (a power of 2).
#[cfg(not(all(test, loom)))]
pub(super) const SHARD_COUNT: usize = 256;
/// One shard under loom: every shard's mutex is a modelled object whose every
/// acquisition (`len()` takes them all) is a point loom explores, and which shard a
/// key lands in must not vary between the executions of one model (the hasher is
/// seeded at random).
#[cfg(all(test, loom))]
pub(super) const SHARD_COUNT: usize = 1;

/// Smallest shard capacity worth shrinking: below it the table costs a few KiB.
pub(super) const SHRINK_CAPACITY_MIN: usize = 32;

/// One shard: its table, counters and a reference count of its own, alone on its
/// cache lines. Waiters and guards point at their key's shard, not at the whole
/// lock, so locking a key writes only that shard's lines: a shared reference count
/// or counter (or two shards on one line) would make unrelated keys on different
/// cores contend in the hardware (measured: `distinct_keys` in
/// `benches/keyed_lock.rs`).
#[repr(align(128))]
pub(super) struct Shard<K> {
    state: Mutex<ShardState<K>>,
    /// The lock's hasher, to rehash entries when the table grows or shrinks.
    hasher: RandomState,
    /// No mutual exclusion at all: for negative controls only.
    #[cfg(feature = "test-util")]
    pub(super) unsynchronized: bool,
    clock: Option<std::sync::Arc<dyn Clock>>,
    pub(super) counters: Counters,
    /// A deliberate bug for the loom negative controls (`loom_tests.rs`).
    #[cfg(all(test, loom))]
    pub(super) bug: Bug,
}

pub(super) struct ShardState<K> {
    pub(super) table: Table<K>,
    /// Acquisitions granted on the call, without waiting (counted under the
    /// shard's mutex, so no atomic is needed).
    pub(super) granted_at_once: u64,
    /// The next waiter's id (unique within the shard, which is all a queue needs).
    pub(super) waiter_id_next: u64,
}

impl<K> ShardState<K> {
    /// Futures queued behind the holders of this shard's keys.
    pub(super) fn waiters(&self) -> usize {
        self.table.iter().map(|(_, e)| e.waiters()).sum()
    }
}

impl<K> Shard<K> {
    pub(super) fn new(hasher: RandomState, clock: Option<std::sync::Arc<dyn Clock>>) -> Self {
        Self {
            state: Mutex::new(ShardState {
                table: Table::new(),
                granted_at_once: 0,
                waiter_id_next: 1,
            }),
            hasher,
            #[cfg(feature = "test-util")]
            unsynchronized: false,
            clock,
            counters: Counters::default(),
            #[cfg(all(test, loom))]
            bug: Bug::None,
        }
    }

    /// The shard's state; a panic elsewhere never leaves it inconsistent (every
    /// critical section is a few infallible map operations), so poisoning is ignored.
    pub(super) fn lock(&self) -> MutexGuard<'_, ShardState<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn now_nanos(&self) -> u64 {
        self.clock.as_ref().map_or(0, |c| c.monotonic_nanos())
    }

    /// Count an acquisition granted after a wait that began at `since_nanos`.
    pub(super) fn record_contended(&self, since_nanos: u64) {
        let waited = self
            .clock
            .as_ref()
            .map(|c| c.monotonic_nanos().saturating_sub(since_nanos));
        self.counters.record_contended(waited);
    }
}

impl<K: Hash + Eq> Shard<K> {
    /// How the table rehashes its entries when it grows or shrinks.
    pub(super) fn rehash(&self) -> impl Fn(&(K, Entry)) -> u64 + '_ {
        |(k, _)| self.hasher.hash_one(k)
    }

    /// Give up the held key `key` (whose hash is `hash`): hand it to the next
    /// waiter or remove the entry.
    pub(super) fn release(&self, hash: u64, key: &K) {
        #[cfg(feature = "test-util")]
        if self.unsynchronized {
            return;
        }
        #[cfg(all(test, loom))]
        if self.bug == Bug::ReleaseInTwoSteps {
            return loom_tests::release_in_two_steps(self, hash, key);
        }
        let waker = hand_off(self, &mut self.lock().table, hash, key);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Pass the held `key` to its next waiter (returning the waker to call once the
/// shard is unlocked), or remove its entry when nobody waits.
pub(super) fn hand_off<K: Hash + Eq>(
    shard: &Shard<K>,
    table: &mut Table<K>,
    hash: u64,
    key: &K,
) -> Option<Waker> {
    let Ok(mut found) = table.find_entry(hash, |(k, _)| k == key) else {
        unreachable!("KeyedLock invariant: a released key has an entry");
    };
    let entry = &mut found.get_mut().1;
    #[cfg(not(all(test, loom)))]
    let next = entry.pop();
    #[cfg(all(test, loom))]
    let next = match shard.bug {
        Bug::Lifo => entry.queue.as_mut().and_then(|queue| queue.pop_back()),
        _ => entry.pop(),
    };
    match next {
        Some(next) => {
            entry.handoff = next.id;
            next.waker
        }
        None => {
            found.remove();
            shrink_if_sparse(shard, table);
            None
        }
    }
}

/// Give back a shard's memory as its keys leave: a table never shrinks by itself,
/// so one burst of a million held keys would otherwise keep its peak size for
/// ever. Once a quarter full it shrinks to about twice its length (rounded up to
/// the table's bucket sizes), so the table size at least halves on each shrink:
/// the rehashes down from a peak of `n` entries cost O(n) together, O(1) per
/// removal amortized.
fn shrink_if_sparse<K: Hash + Eq>(shard: &Shard<K>, table: &mut Table<K>) {
    let capacity = table.capacity();
    if capacity > SHRINK_CAPACITY_MIN && table.len() * 4 < capacity {
        table.shrink_to(table.len() * 2, shard.rehash());
    }
}
