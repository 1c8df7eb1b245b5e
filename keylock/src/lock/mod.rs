//! [`KeyedLock`]: the table of keys and its public operations.
//!
//! The pieces, one per file: [`shard`] (a slice of the table, its mutex and its
//! counters, and the release / hand-off step), [`entry`] (a held key: its queue of
//! waiters and the hand-off mark), [`acquire`] (the future that waits for a key),
//! [`guard`] (the held key), [`metrics`] (counters and their snapshot), [`error`]
//! (the refusals).

mod acquire;
mod entry;
mod error;
mod guard;
mod metrics;
mod shard;

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use foldhash::fast::RandomState;

pub use acquire::Acquire;
use acquire::AcquireState;
use entry::{Entry, Waiter};
pub use error::{LockTimedOut, QueueFull};
pub use guard::KeyGuard;
pub use metrics::{LockMetrics, WAIT_BUCKETS_MICROS};
use shard::{Shard, ShardState, SHARD_COUNT};

use crate::clock::Clock;
// `std`'s, or loom's models of them in the loom tests (see `crate::sync`).
use crate::sync::Arc;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, loom))]
use loom_tests::Bug;

/// An asynchronous mutex per key. Cheap to clone: clones share the same table.
///
/// See the [crate docs](crate) for fairness, cancel safety and an example.
pub struct KeyedLock<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    shards: Box<[Arc<Shard<K>>]>,
    hasher: RandomState,
}

impl<K> Clone for KeyedLock<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for KeyedLock<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("KeyedLock");
        #[cfg(feature = "test-util")]
        debug.field("unsynchronized", &self.inner.shards[0].unsynchronized);
        debug.finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> Default for KeyedLock<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> KeyedLock<K> {
    /// A lock that does not measure wait times.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A lock that measures wait times with `clock`'s monotonic reading (see
    /// [`LockMetrics::wait_nanos_total`]).
    ///
    /// `clock` may be a trait object (`Arc<dyn MyClock>`) whose trait has
    /// [`Clock`] as a supertrait.
    pub fn with_clock<C: Clock + ?Sized + 'static>(clock: std::sync::Arc<C>) -> Self {
        Self::build(Some(std::sync::Arc::new(clock)))
    }

    /// A "lock" that grants every request at once and excludes nothing.
    ///
    /// It exists for negative controls: tests that show what goes wrong without the
    /// lock, to prove that they could fail. Only with the `test-util` feature; a
    /// build without it has neither this constructor nor its branches.
    #[cfg(feature = "test-util")]
    pub fn unsynchronized() -> Self {
        let mut lock = Self::new();
        let inner = Arc::get_mut(&mut lock.inner).expect("a new lock is not shared");
        for shard in inner.shards.iter_mut() {
            Arc::get_mut(shard)
                .expect("a new lock is not shared")
                .unsynchronized = true;
        }
        lock
    }

    /// A lock with `bug` planted in every shard: the negative controls of the loom
    /// tests, which the model checker must reject.
    #[cfg(all(test, loom))]
    fn with_bug(bug: Bug) -> Self {
        if bug == Bug::Unsynchronized {
            return Self::unsynchronized();
        }
        let mut lock = Self::new();
        let inner = Arc::get_mut(&mut lock.inner).expect("a new lock is not shared");
        for shard in inner.shards.iter_mut() {
            Arc::get_mut(shard).expect("a new lock is not shared").bug = bug;
        }
        lock
    }

    fn build(clock: Option<std::sync::Arc<dyn Clock>>) -> Self {
        let hasher = RandomState::default();
        let shards = (0..SHARD_COUNT)
            .map(|_| Arc::new(Shard::new(hasher.clone(), clock.clone())))
            .collect();
        Self {
            inner: Arc::new(Inner { shards, hasher }),
        }
    }

    /// Acquire `key`, waiting behind the current holder and earlier waiters.
    ///
    /// The place in the queue is taken now, by this call; the returned future only
    /// waits for its turn. It is cancel safe (see the [crate docs](crate)). The
    /// queue is not bounded: see [`lock_bounded`](Self::lock_bounded).
    pub fn lock(&self, key: K) -> Acquire<K> {
        match self.enqueue(key, usize::MAX) {
            Ok(acquire) => acquire,
            Err(_) => unreachable!("no queue holds usize::MAX waiters"),
        }
    }

    /// [`lock`](Self::lock), unless `waiters_max` callers already wait for `key`
    /// behind its holder: then refuse at once, queueing nothing (counted in
    /// [`LockMetrics::queue_full`]). `0` admits only an uncontended acquisition.
    pub fn lock_bounded(&self, key: K, waiters_max: usize) -> Result<Acquire<K>, QueueFull> {
        self.enqueue(key, waiters_max)
    }

    fn enqueue(&self, key: K, waiters_max: usize) -> Result<Acquire<K>, QueueFull> {
        let hash = self.inner.hasher.hash_one(&key);
        let shard = self.inner.shard_at(hash);
        #[cfg(feature = "test-util")]
        if shard.unsynchronized {
            shard.counters.acquisitions_elsewhere.fetch_add(1, Relaxed);
            return Ok(Acquire::new(
                Arc::clone(shard),
                hash,
                key,
                AcquireState::Granted,
            ));
        }
        let mut state = shard.lock();
        let ShardState {
            table,
            granted_at_once,
            waiter_id_next,
        } = &mut *state;
        // One probe whether the key is free or held.
        let acquire_state = match table.entry(hash, |(k, _)| *k == key, shard.rehash()) {
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert((key.clone(), Entry::default()));
                *granted_at_once += 1;
                AcquireState::Granted
            }
            hashbrown::hash_table::Entry::Occupied(mut held) => {
                let (_, entry) = held.get_mut();
                if entry.waiters() >= waiters_max {
                    drop(state);
                    shard.counters.queue_full.fetch_add(1, Relaxed);
                    return Err(QueueFull { waiters_max });
                }
                let id = *waiter_id_next;
                *waiter_id_next += 1;
                entry.push(Waiter { id, waker: None });
                AcquireState::Queued {
                    id,
                    since_nanos: shard.now_nanos(),
                }
            }
        };
        drop(state);
        Ok(Acquire::new(Arc::clone(shard), hash, key, acquire_state))
    }

    /// Acquire `key` unless `timeout` completes first.
    ///
    /// `timeout` is any future: `tokio::time::sleep(d)` on tokio, a `setTimeout`
    /// promise in a browser. On timeout the wait is abandoned (cancel safe) and
    /// counted in [`LockMetrics::timeouts`]. The queue position is taken by this call.
    pub fn lock_timeout<T: Future>(
        &self,
        key: K,
        timeout: T,
    ) -> impl Future<Output = Result<KeyGuard<K>, LockTimedOut>> {
        let acquire = self.lock(key);
        async move {
            let mut acquire = Some(acquire);
            let mut timeout = std::pin::pin!(timeout);
            std::future::poll_fn(|cx| {
                let Some(pending) = acquire.as_mut() else {
                    return Poll::Ready(Err(LockTimedOut));
                };
                if let Poll::Ready(guard) = Pin::new(pending).poll(cx) {
                    return Poll::Ready(Ok(guard));
                }
                if timeout.as_mut().poll(cx).is_ready() {
                    if let Some(abandoned) = acquire.take() {
                        abandoned.abandon_timed_out();
                    }
                    return Poll::Ready(Err(LockTimedOut));
                }
                Poll::Pending
            })
            .await
        }
    }

    /// Acquire `key` if it is free right now.
    pub fn try_lock(&self, key: K) -> Option<KeyGuard<K>> {
        let hash = self.inner.hasher.hash_one(&key);
        let shard = self.inner.shard_at(hash);
        #[cfg(feature = "test-util")]
        if shard.unsynchronized {
            shard.counters.acquisitions_elsewhere.fetch_add(1, Relaxed);
            return Some(KeyGuard::new(Arc::clone(shard), hash, key));
        }
        let mut state = shard.lock();
        if state.table.find(hash, |(k, _)| *k == key).is_some() {
            return None;
        }
        let value = (key.clone(), Entry::default());
        state.table.insert_unique(hash, value, shard.rehash());
        state.granted_at_once += 1;
        drop(state);
        Some(KeyGuard::new(Arc::clone(shard), hash, key))
    }

    /// The number of keys held or awaited: the size of the table.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().table.len()).sum()
    }

    /// Whether no key is held or awaited.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of futures queued behind holders, over all keys.
    pub fn waiters(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().waiters()).sum()
    }

    /// A snapshot of the gauges and counters (one pass over the shards, each
    /// locked once).
    pub fn metrics(&self) -> LockMetrics {
        let mut m = LockMetrics {
            wait_histogram: vec![0; WAIT_BUCKETS_MICROS.len() + 1],
            ..LockMetrics::default()
        };
        for shard in self.inner.shards.iter() {
            {
                let state = shard.lock();
                m.keys += state.table.len();
                m.waiters += state.waiters();
                m.acquisitions += state.granted_at_once;
            }
            shard.counters.add_to(&mut m);
        }
        m
    }
}

impl<K> Inner<K> {
    /// The shard that owns the key whose hash is `hash`.
    fn shard_at(&self, hash: u64) -> &Arc<Shard<K>> {
        // Bits 32.. pick the shard: hashbrown takes a slot's position from the low
        // bits and its 7-bit tag from the top ones, so keys of one shard still
        // differ in both (with the top bits here, they would share one tag and
        // every probe would compare every key of a group).
        &self.shards[((hash >> 32) as usize) & (SHARD_COUNT - 1)]
    }
}

// Not under loom: these tests run outside a loom model, where loom's primitives
// cannot be used (the loom tests are `loom_tests`).
#[cfg(all(test, not(loom)))]
mod tests;
