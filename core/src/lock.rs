//! [`KeyedLock`]: an asynchronous mutex per key.
//!
//! One `KeyedLock<K>` stands for a lazily created mutex per key. Locking key `a`
//! never waits for key `b`. Entries live in a sharded table and exist **only while a
//! key is held or awaited**: the last guard or waiter to leave removes its entry, so a
//! million distinct keys touched once leave nothing behind.
//!
//! # Fairness
//!
//! Strictly FIFO per key. The position in the queue is taken when [`KeyedLock::lock`]
//! is **called**, not when the returned future is first polled, so two calls made one
//! after the other are granted in that order whatever the scheduler does next. On
//! release the lock is *handed off* to the waiter at the head of the queue: it stays
//! held through the hand-off, so no late arrival can barge in between.
//!
//! # Cancel safety
//!
//! [`Acquire`] is cancel safe. Dropping it anywhere in the queue removes it from
//! the queue and never strands the next waiter; dropping it after the lock was
//! handed to it (but before it was polled to completion) passes the lock on to the
//! next waiter, or frees the key. Using it in a `select!` with a timer is how
//! timeouts work: see [`KeyedLock::lock_timeout`].
//!
//! # Guards
//!
//! [`KeyGuard`] is owned (`'static`, `Send` when `K` is): it can be moved into a
//! spawned task or kept in a response future. The key is released when it drops.
//!
//! # Runtime
//!
//! None. Wake-ups go through the standard [`Waker`]; the caller brings the timer.
//!
//! # Example
//!
//! ```
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! use pointlock_core::KeyedLock;
//!
//! let lock = KeyedLock::new();
//! block_on(async {
//!     let guard = lock.lock(7_u64).await;
//!     assert!(lock.try_lock(7).is_none()); // held
//!     assert!(lock.try_lock(8).is_some()); // other keys are independent
//!     drop(guard);
//!     assert_eq!(lock.len(), 0); // nothing left behind
//! });
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::PoisonError;
use std::task::{Context, Poll, Waker};

use foldhash::fast::RandomState;
use serde::Serialize;

use crate::clock::Clock;
// `std`'s, or loom's models of them in the loom tests (see `crate::sync`).
use crate::sync::{Arc, AtomicU64, Mutex, MutexGuard};

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, loom))]
use loom_tests::Bug;

/// One shard's table of `(key, entry)`. The key is hashed once per `lock()` (with
/// foldhash: SipHash made hashing most of an uncontended acquisition's cost), and
/// that hash picks the shard and finds the entry again on every later step.
type Table<K> = hashbrown::HashTable<(K, Entry)>;

/// Independent tables, so unrelated keys rarely touch the same mutex (a power of 2).
#[cfg(not(all(test, loom)))]
const SHARD_COUNT: usize = 256;
/// One shard under loom: every shard's mutex is a modelled object whose every
/// acquisition (`len()` takes them all) is a point loom explores, and which shard a
/// key lands in must not vary between the executions of one model (the hasher is
/// seeded at random).
#[cfg(all(test, loom))]
const SHARD_COUNT: usize = 1;

/// One shard: its table, counters and a reference count of its own, alone on its
/// cache lines. Waiters and guards point at their key's shard, not at the whole
/// lock, so locking a key writes only that shard's lines: a shared reference count
/// or counter (or two shards on one line) would make unrelated keys on different
/// cores contend in the hardware (measured: `distinct_keys` in
/// `benches/keyed_lock.rs`).
#[repr(align(128))]
struct Shard<K> {
    state: Mutex<ShardState<K>>,
    /// The lock's hasher, to rehash entries when the table grows or shrinks.
    hasher: RandomState,
    /// No mutual exclusion at all: for negative controls only.
    unsynchronized: bool,
    clock: Option<std::sync::Arc<dyn Clock>>,
    counters: Counters,
    /// A deliberate bug for the loom negative controls (`loom_tests.rs`).
    #[cfg(all(test, loom))]
    bug: Bug,
}

struct ShardState<K> {
    table: Table<K>,
    /// Acquisitions granted on the call, without waiting (counted under the
    /// shard's mutex, so no atomic is needed).
    granted_at_once: u64,
    /// The next waiter's id (unique within the shard, which is all a queue needs).
    waiter_id_next: u64,
}

/// Upper bounds (inclusive, microseconds) of the wait-time histogram's buckets; a
/// last bucket counts everything longer.
pub const WAIT_BUCKETS_MICROS: [u64; 7] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000];

/// An asynchronous mutex per key. Cheap to clone: clones share the same table.
///
/// See the [module docs](self) for fairness, cancel safety and an example.
pub struct KeyedLock<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    shards: Box<[Arc<Shard<K>>]>,
    hasher: RandomState,
    /// No mutual exclusion at all: for negative controls only.
    unsynchronized: bool,
}

/// A held key. Invariant: the entry exists iff the key is held by a guard, is being
/// handed to a waiter (`handoff`), or both; waiters queue only behind a holder.
///
/// 16 bytes, so an uncontended lock and unlock (which insert and remove the entry)
/// move little: the queue is only allocated once a second acquirer waits, and the
/// hand-off is a waiter id (ids start at 1; 0 is none).
#[derive(Default)]
struct Entry {
    // Boxed on purpose: 8 bytes instead of a 32-byte `VecDeque` in every entry
    // (and in every table slot), for an extra allocation only when a key is contended.
    #[allow(clippy::box_collection)]
    queue: Option<Box<VecDeque<Waiter>>>,
    /// The id of the waiter the lock has been handed to, until it collects the
    /// guard; 0 if none.
    handoff: u64,
}

impl Entry {
    fn waiters(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    fn push(&mut self, waiter: Waiter) {
        self.queue
            .get_or_insert_with(Box::default)
            .push_back(waiter);
    }

    fn pop(&mut self) -> Option<Waiter> {
        self.queue.as_mut()?.pop_front()
    }

    /// The waiter `id`, found by binary search: ids are handed out in increasing
    /// order within a shard and waiters only join at the back, so every queue is
    /// sorted by id (a linear scan made each poll of a waiter deep in a long
    /// queue cost the queue's length).
    fn waiter_mut(&mut self, id: u64) -> Option<&mut Waiter> {
        let queue = self.queue.as_mut()?;
        let at = position(queue, id)?;
        queue.get_mut(at)
    }

    fn remove_waiter(&mut self, id: u64) {
        if let Some(queue) = &mut self.queue {
            if let Some(at) = position(queue, id) {
                // Moves the shorter side of the ring buffer: at most half the queue,
                // which `lock_bounded` caps.
                queue.remove(at);
            }
        }
    }
}

/// Where waiter `id` is in `queue` (sorted by id), by binary search.
fn position(queue: &VecDeque<Waiter>, id: u64) -> Option<usize> {
    #[cfg(test)]
    let queue_probes = std::cell::Cell::new(0_usize);
    let found = queue.binary_search_by(|w| {
        #[cfg(test)]
        queue_probes.set(queue_probes.get() + 1);
        w.id.cmp(&id)
    });
    #[cfg(test)]
    PROBES.with(|probes| probes.set(probes.get() + queue_probes.get()));
    found.ok()
}

#[cfg(test)]
thread_local! {
    /// Waiters compared by `position` on this thread (tests of the lookup's cost).
    static PROBES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

struct Waiter {
    id: u64,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Counters {
    /// Acquisitions not counted by a shard: granted after a wait, or unsynchronized.
    acquisitions_elsewhere: AtomicU64,
    contended: AtomicU64,
    timeouts: AtomicU64,
    cancelled: AtomicU64,
    queue_full: AtomicU64,
    wait_nanos_total: AtomicU64,
    wait_nanos_max: AtomicU64,
    wait_buckets: [AtomicU64; WAIT_BUCKETS_MICROS.len() + 1],
}

/// A snapshot of a lock's gauges and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LockMetrics {
    /// Keys currently held or awaited (entries in the table).
    pub keys: usize,
    /// Futures currently queued behind a holder.
    pub waiters: usize,
    /// Guards granted since creation.
    pub acquisitions: u64,
    /// Guards granted after waiting in a queue.
    pub contended: u64,
    /// Waits abandoned because the caller's timeout fired.
    pub timeouts: u64,
    /// Waits abandoned by dropping the future (timeouts included).
    pub cancelled: u64,
    /// Acquisitions refused at once because the key's queue was full
    /// ([`KeyedLock::lock_bounded`]).
    pub queue_full: u64,
    /// Total time contended acquisitions spent queued (0 without a clock).
    pub wait_nanos_total: u64,
    /// Longest single wait (0 without a clock).
    pub wait_nanos_max: u64,
    /// Contended waits per bucket of [`WAIT_BUCKETS_MICROS`], then the overflow bucket.
    pub wait_histogram: Vec<u64>,
}

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
/// ([`KeyedLock::lock_bounded`]). Nothing was queued or held.
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

impl<K> Clone for KeyedLock<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for KeyedLock<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLock")
            .field("unsynchronized", &self.inner.unsynchronized)
            .finish_non_exhaustive()
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
        Self::build(None, false)
    }

    /// A lock that measures wait times with `clock`'s monotonic reading.
    pub fn with_clock(clock: std::sync::Arc<dyn Clock>) -> Self {
        Self::build(Some(clock), false)
    }

    /// A "lock" that grants every request at once and excludes nothing.
    ///
    /// It exists for negative controls: tests that show what goes wrong without the
    /// lock, to prove that they could fail. Only with the `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn unsynchronized() -> Self {
        Self::build(None, true)
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

    fn build(clock: Option<std::sync::Arc<dyn Clock>>, unsynchronized: bool) -> Self {
        let hasher = RandomState::default();
        let shards = (0..SHARD_COUNT)
            .map(|_| {
                Arc::new(Shard {
                    hasher: hasher.clone(),
                    state: Mutex::new(ShardState {
                        table: Table::new(),
                        granted_at_once: 0,
                        waiter_id_next: 1,
                    }),
                    unsynchronized,
                    clock: clock.clone(),
                    counters: Counters::default(),
                    #[cfg(all(test, loom))]
                    bug: Bug::None,
                })
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                hasher,
                unsynchronized,
            }),
        }
    }

    /// Acquire `key`, waiting behind the current holder and earlier waiters.
    ///
    /// The place in the queue is taken now, by this call; the returned future only
    /// waits for its turn. It is cancel safe (see the [module docs](self)). The
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
        let state = if shard.unsynchronized {
            shard.counters.acquisitions_elsewhere.fetch_add(1, Relaxed);
            AcquireState::Granted
        } else {
            let mut state = shard.lock();
            let ShardState {
                table,
                granted_at_once,
                waiter_id_next,
            } = &mut *state;
            // One probe whether the key is free or held.
            match table.entry(hash, |(k, _)| *k == key, shard.rehash()) {
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
            }
        };
        Ok(Acquire {
            shard: Some(Arc::clone(shard)),
            hash,
            key,
            state,
        })
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
        if shard.unsynchronized {
            shard.counters.acquisitions_elsewhere.fetch_add(1, Relaxed);
        } else {
            let mut state = shard.lock();
            if state.table.find(hash, |(k, _)| *k == key).is_some() {
                return None;
            }
            let value = (key.clone(), Entry::default());
            state.table.insert_unique(hash, value, shard.rehash());
            state.granted_at_once += 1;
        }
        Some(KeyGuard {
            shard: Arc::clone(shard),
            hash,
            key,
        })
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
        self.inner
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .table
                    .iter()
                    .map(|(_, e)| e.waiters())
                    .sum::<usize>()
            })
            .sum()
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
                m.waiters += state.table.iter().map(|(_, e)| e.waiters()).sum::<usize>();
                m.acquisitions += state.granted_at_once;
            }
            let c = &shard.counters;
            m.acquisitions += c.acquisitions_elsewhere.load(Relaxed);
            m.contended += c.contended.load(Relaxed);
            m.timeouts += c.timeouts.load(Relaxed);
            m.cancelled += c.cancelled.load(Relaxed);
            m.queue_full += c.queue_full.load(Relaxed);
            m.wait_nanos_total += c.wait_nanos_total.load(Relaxed);
            m.wait_nanos_max = m.wait_nanos_max.max(c.wait_nanos_max.load(Relaxed));
            for (sum, bucket) in m.wait_histogram.iter_mut().zip(&c.wait_buckets) {
                *sum += bucket.load(Relaxed);
            }
        }
        m
    }

    /// Whether this lock hands out no exclusion (a test-util negative control).
    pub fn is_unsynchronized(&self) -> bool {
        self.inner.unsynchronized
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

impl<K: Hash + Eq> Shard<K> {
    /// The shard's state; a panic elsewhere never leaves it inconsistent (every
    /// critical section is a few infallible map operations), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, ShardState<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_nanos(&self) -> u64 {
        self.clock.as_ref().map_or(0, |c| c.monotonic_nanos())
    }

    /// How the table rehashes its entries when it grows or shrinks.
    fn rehash(&self) -> impl Fn(&(K, Entry)) -> u64 + '_ {
        |(k, _)| self.hasher.hash_one(k)
    }

    /// Give up the held key `key` (whose hash is `hash`): hand it to the next
    /// waiter or remove the entry.
    fn release(&self, hash: u64, key: &K) {
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

    fn record_contended(&self, since_nanos: u64) {
        let c = &self.counters;
        c.acquisitions_elsewhere.fetch_add(1, Relaxed);
        c.contended.fetch_add(1, Relaxed);
        if self.clock.is_none() {
            return;
        }
        let waited = self.now_nanos().saturating_sub(since_nanos);
        c.wait_nanos_total.fetch_add(waited, Relaxed);
        c.wait_nanos_max.fetch_max(waited, Relaxed);
        let micros = waited / 1_000;
        let bucket = WAIT_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(WAIT_BUCKETS_MICROS.len());
        c.wait_buckets[bucket].fetch_add(1, Relaxed);
    }
}

/// Pass the held `key` to its next waiter (returning the waker to call once the
/// shard is unlocked), or remove its entry when nobody waits.
fn hand_off<K: Hash + Eq>(
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

/// Smallest shard capacity worth shrinking: below it the table costs a few KiB.
const SHRINK_CAPACITY_MIN: usize = 32;

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

/// The future returned by [`KeyedLock::lock`]: resolves to the key's guard.
///
/// Cancel safe: dropping it leaves the queue (or, if the lock was already handed to
/// it, passes the lock on). It has already taken its place in the queue.
#[must_use = "the queue position is given up when this future is dropped"]
pub struct Acquire<K: Hash + Eq + Clone> {
    /// The key's shard; moved into the guard when it is handed out.
    shard: Option<Arc<Shard<K>>>,
    /// The key's hash, computed once by `lock()`.
    hash: u64,
    key: K,
    state: AcquireState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcquireState {
    /// Held by this future; the guard has not been handed out yet.
    Granted,
    /// Queued with this id since the given monotonic time.
    Queued { id: u64, since_nanos: u64 },
    /// The guard was handed out; nothing left to do.
    Done,
}

// `Acquire` is never structurally pinned: all its fields move freely.
impl<K: Hash + Eq + Clone> Unpin for Acquire<K> {}

impl<K: Hash + Eq + Clone> Acquire<K> {
    /// The key this future waits for.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Whether the lock is already held by this future (poll it to collect the guard).
    pub fn is_granted(&self) -> bool {
        match self.state {
            AcquireState::Granted => true,
            AcquireState::Queued { id, .. } => {
                let state = self.shard().lock();
                let entry = state.table.find(self.hash, |(k, _)| *k == self.key);
                entry.is_some_and(|(_, e)| e.handoff == id)
            }
            AcquireState::Done => false,
        }
    }

    /// Drop this wait because the caller's timeout fired, counting the timeout.
    pub fn abandon_timed_out(self) {
        self.shard().counters.timeouts.fetch_add(1, Relaxed);
        drop(self);
    }

    fn shard(&self) -> &Shard<K> {
        self.shard
            .as_ref()
            .expect("KeyedLock invariant: an Acquire owns its shard until it hands out the guard")
    }

    fn guard(&mut self) -> KeyGuard<K> {
        self.state = AcquireState::Done;
        KeyGuard {
            shard: self
                .shard
                .take()
                .expect("KeyedLock invariant: the guard is handed out once"),
            hash: self.hash,
            key: self.key.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> Future for Acquire<K> {
    type Output = KeyGuard<K>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<KeyGuard<K>> {
        let this = self.get_mut();
        match this.state {
            AcquireState::Granted => Poll::Ready(this.guard()),
            AcquireState::Queued { id, since_nanos } => {
                #[cfg(all(test, loom))]
                if let Bug::PollInTwoSteps | Bug::HeadTakesTheKey = this.shard().bug {
                    return loom_tests::poll_wrongly(this, id, since_nanos, cx);
                }
                let shard = this.shard();
                let mut state = shard.lock();
                let (_, entry) = state
                    .table
                    .find_mut(this.hash, |(k, _)| *k == this.key)
                    .expect("KeyedLock invariant: a queued waiter's key has an entry");
                if entry.handoff == id {
                    entry.handoff = 0;
                    drop(state);
                    shard.record_contended(since_nanos);
                    return Poll::Ready(this.guard());
                }
                let waiter = entry
                    .waiter_mut(id)
                    .expect("KeyedLock invariant: a queued waiter is in its queue");
                match &mut waiter.waker {
                    Some(waker) => waker.clone_from(cx.waker()),
                    empty => *empty = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            AcquireState::Done => panic!("`Acquire` polled after it returned its guard"),
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Acquire<K> {
    fn drop(&mut self) {
        let id = match self.state {
            AcquireState::Done => return,
            AcquireState::Granted => return self.shard().release(self.hash, &self.key),
            AcquireState::Queued { id, .. } => id,
        };
        let shard = self.shard();
        shard.counters.cancelled.fetch_add(1, Relaxed);
        #[cfg(all(test, loom))]
        if let Bug::CancelInTwoSteps | Bug::CancelForgetsHandOff = shard.bug {
            return loom_tests::cancel_wrongly(self, id);
        }
        let waker = {
            let mut state = shard.lock();
            let (_, entry) = state
                .table
                .find_mut(self.hash, |(k, _)| *k == self.key)
                .expect("KeyedLock invariant: a queued waiter's key has an entry");
            if entry.handoff == id {
                // Handed to us but never collected: pass it on.
                entry.handoff = 0;
                hand_off(shard, &mut state.table, self.hash, &self.key)
            } else {
                entry.remove_waiter(id);
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug> fmt::Debug for Acquire<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("key", &self.key)
            .field("state", &self.state)
            .finish()
    }
}

/// Proof that a key is held. Owned: it may be moved into another task. Dropping
/// it releases the key to the next waiter in FIFO order.
#[must_use = "the key is released as soon as the guard is dropped"]
pub struct KeyGuard<K: Hash + Eq + Clone> {
    /// The key's shard (not the whole lock: see [`Shard`]).
    shard: Arc<Shard<K>>,
    /// The key's hash, computed once by `lock()`.
    hash: u64,
    key: K,
}

impl<K: Hash + Eq + Clone> KeyGuard<K> {
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

// Not under loom: these tests run outside a loom model, where loom's primitives
// cannot be used (the loom tests are `loom_tests`).
#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn tables_shrink_back_after_a_burst_of_keys() {
        let lock = KeyedLock::<u64>::new();
        let guards: Vec<_> = (0..20_000).map(|k| lock.try_lock(k).unwrap()).collect();
        let peak: usize = lock
            .inner
            .shards
            .iter()
            .map(|s| s.lock().table.capacity())
            .sum();
        assert!(peak >= 20_000);
        drop(guards);
        for shard in lock.inner.shards.iter() {
            let capacity = shard.lock().table.capacity();
            assert!(
                capacity <= SHRINK_CAPACITY_MIN,
                "a shard kept {capacity} slots"
            );
        }
    }

    /// A waker that records whether it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn take(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    /// A queued acquire with its own waker.
    struct Probe {
        acquire: Acquire<u64>,
        flag: Arc<Flag>,
    }

    impl Probe {
        fn new(lock: &KeyedLock<u64>, key: u64) -> Self {
            Self {
                acquire: lock.lock(key),
                flag: Arc::default(),
            }
        }

        fn poll(&mut self) -> Poll<KeyGuard<u64>> {
            let waker = Waker::from(Arc::clone(&self.flag));
            Pin::new(&mut self.acquire).poll(&mut Context::from_waker(&waker))
        }

        fn pending(&mut self) -> bool {
            self.poll().is_pending()
        }

        fn ready(&mut self) -> KeyGuard<u64> {
            match self.poll() {
                Poll::Ready(guard) => guard,
                Poll::Pending => panic!("expected the lock to be granted"),
            }
        }
    }

    fn ready_now<F: Future + Unpin>(mut fut: F) -> F::Output {
        match Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("expected the future to be ready"),
        }
    }

    #[test]
    fn uncontended_lock_is_granted_at_once_and_leaves_nothing() {
        let lock = KeyedLock::new();
        let guard = ready_now(lock.lock(1));
        assert_eq!(guard.key(), &1);
        assert_eq!(lock.len(), 1);
        drop(guard);
        assert_eq!(lock.len(), 0);
        assert_eq!(lock.metrics().acquisitions, 1);
        assert_eq!(lock.metrics().contended, 0);
    }

    #[test]
    fn fifo_with_four_waiters_and_wakes_only_the_head() {
        let lock = KeyedLock::new();
        let holder = ready_now(lock.lock(1));
        let mut waiters: Vec<Probe> = (0..4).map(|_| Probe::new(&lock, 1)).collect();
        for w in &mut waiters {
            assert!(w.pending());
        }
        assert_eq!(lock.waiters(), 4);

        drop(holder);
        let mut held = None;
        for i in 0..4 {
            // Only the head was woken, and only it can take the lock.
            assert!(waiters[i].flag.take(), "waiter {i} must be woken");
            for later in &mut waiters[i + 1..] {
                assert!(!later.flag.take());
                assert!(later.pending());
            }
            drop(held.take());
            held = Some(waiters[i].ready());
            if i + 1 < 4 {
                assert!(!waiters[i + 1].flag.take(), "not woken before the release");
            }
            drop(held.take());
        }
        assert_eq!(lock.len(), 0);
        assert_eq!(lock.metrics().contended, 4);
    }

    #[test]
    fn queue_position_is_taken_by_the_call_not_the_first_poll() {
        let lock = KeyedLock::new();
        let holder = ready_now(lock.lock(1));
        let mut first = Probe::new(&lock, 1);
        let mut second = Probe::new(&lock, 1);
        // Poll in the opposite order: the second caller must still wait.
        assert!(second.pending());
        assert!(first.pending());
        drop(holder);
        assert!(second.pending());
        let g = first.ready();
        drop(g);
        drop(second.ready());
        assert!(lock.is_empty());
    }

    #[test]
    fn a_waiter_dropped_mid_queue_does_not_strand_the_next() {
        let lock = KeyedLock::new();
        let holder = ready_now(lock.lock(1));
        let mut a = Probe::new(&lock, 1);
        let b = Probe::new(&lock, 1);
        let mut c = Probe::new(&lock, 1);
        assert!(a.pending() && c.pending());
        drop(b);
        assert_eq!(lock.waiters(), 2);
        drop(holder);
        let ga = a.ready();
        assert!(c.pending());
        drop(ga);
        assert!(c.flag.take(), "c is woken when a releases");
        drop(c.ready());
        assert!(lock.is_empty());
        assert_eq!(lock.metrics().cancelled, 1);
    }

    #[test]
    fn a_waiter_dropped_after_the_handoff_passes_the_lock_on() {
        let lock = KeyedLock::new();
        let holder = ready_now(lock.lock(1));
        let mut a = Probe::new(&lock, 1);
        let mut b = Probe::new(&lock, 1);
        assert!(a.pending() && b.pending());
        drop(holder);
        assert!(a.acquire.is_granted(), "handed to a");
        drop(a); // cancelled before collecting its guard
        assert!(b.flag.take(), "the hand-off moves on to b");
        drop(b.ready());
        assert!(lock.is_empty());
    }

    #[test]
    fn a_granted_but_never_polled_acquire_releases_on_drop() {
        let lock = KeyedLock::new();
        let a = lock.lock(1);
        assert!(a.is_granted());
        let mut b = Probe::new(&lock, 1);
        assert!(b.pending());
        drop(a);
        drop(b.ready());
        assert!(lock.is_empty());
    }

    #[test]
    fn churn_with_cancelled_waiters_leaves_an_empty_table() {
        let lock = KeyedLock::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..200_u64 {
            let keys = 1 + round % 5;
            let mut guards = Vec::new();
            let mut probes = Vec::new();
            for key in 0..keys {
                guards.push(ready_now(lock.lock(key)));
                for _ in 0..rng.usize(0..6) {
                    let mut p = Probe::new(&lock, key);
                    if rng.bool() {
                        assert!(p.pending());
                    }
                    probes.push(p);
                }
            }
            // Cancel a random half of the waiters, release holders, then drain.
            rng.shuffle(&mut probes);
            probes.truncate(probes.len() / 2);
            guards.clear();
            while !probes.is_empty() {
                let mut progressed = false;
                probes.retain_mut(|p| match p.poll() {
                    Poll::Ready(g) => {
                        drop(g);
                        progressed = true;
                        false
                    }
                    Poll::Pending => true,
                });
                assert!(progressed, "a waiter was stranded");
            }
            assert_eq!(lock.len(), 0, "round {round}");
            assert_eq!(lock.waiters(), 0);
        }
    }

    /// A timeout future the test fires by hand.
    #[derive(Clone, Default)]
    struct Trigger(Arc<AtomicBool>);

    impl Future for Trigger {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn timeout_gives_up_cleanly_and_counts() {
        let lock = KeyedLock::new();
        let holder = ready_now(lock.lock(1));
        let trigger = Trigger::default();
        let mut timed = Box::pin(lock.lock_timeout(1, trigger.clone()));
        let mut behind = Probe::new(&lock, 1);
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(timed.as_mut().poll(cx).is_pending());
        trigger.0.store(true, Ordering::SeqCst);
        assert_eq!(
            timed.as_mut().poll(cx).map(|r| r.err()),
            Poll::Ready(Some(LockTimedOut))
        );
        assert_eq!(lock.waiters(), 1, "the timed-out waiter left the queue");
        assert_eq!(lock.metrics().timeouts, 1);
        drop(holder);
        drop(behind.ready());
        assert!(lock.is_empty());
    }

    #[test]
    fn timeout_loses_to_an_available_lock() {
        let lock = KeyedLock::new();
        let fired = Trigger(Arc::new(AtomicBool::new(true)));
        let mut timed = Box::pin(lock.lock_timeout(1, fired));
        let cx = &mut Context::from_waker(Waker::noop());
        match timed.as_mut().poll(cx) {
            Poll::Ready(Ok(guard)) => drop(guard),
            other => panic!("expected the guard, got {:?}", other.map(|r| r.is_ok())),
        }
        assert_eq!(lock.metrics().timeouts, 0);
    }

    #[test]
    fn different_keys_never_block_each_other() {
        let lock = KeyedLock::new();
        let guards: Vec<_> = (0..1_000).map(|k| ready_now(lock.lock(k))).collect();
        assert_eq!(lock.len(), 1_000);
        assert_eq!(lock.waiters(), 0);
        drop(guards);
        assert!(lock.is_empty());
    }

    #[test]
    fn try_lock_fails_only_while_held() {
        let lock = KeyedLock::new();
        let g = lock.try_lock(1).expect("free");
        assert!(lock.try_lock(1).is_none());
        assert!(lock.try_lock(2).is_some());
        drop(g);
        assert!(lock.try_lock(1).is_some());
        assert!(lock.is_empty());
    }

    #[test]
    fn guard_moves_to_another_thread_and_releases_there() {
        fn assert_send_static<T: Send + 'static>(_: &T) {}
        let lock = KeyedLock::new();
        let guard = ready_now(lock.lock(1));
        assert_send_static(&guard);
        let mut waiter = Probe::new(&lock, 1);
        assert!(waiter.pending());
        std::thread::spawn(move || drop(guard))
            .join()
            .expect("thread");
        assert!(waiter.flag.take());
        drop(waiter.ready());
        assert!(lock.is_empty());
    }

    #[test]
    fn wait_time_is_measured_with_the_clock() {
        let clock = Arc::new(ManualClock::new(0));
        let lock = KeyedLock::with_clock(clock.clone());
        let holder = ready_now(lock.lock(1));
        let mut w = Probe::new(&lock, 1);
        assert!(w.pending());
        clock.advance_millis(5);
        drop(holder);
        drop(w.ready());
        let m = lock.metrics();
        assert_eq!(m.wait_nanos_total, 5_000_000);
        assert_eq!(m.wait_nanos_max, 5_000_000);
        // 5 ms falls in the "<= 10 ms" bucket.
        assert_eq!(m.wait_histogram[4], 1);
    }

    #[test]
    fn lock_bounded_refuses_past_the_bound_queues_nothing_and_counts() {
        let lock = KeyedLock::new();
        let holder = lock.lock_bounded(1, 2).unwrap();
        assert!(
            holder.is_granted(),
            "a free key is granted whatever the bound"
        );
        let mut waiting: Vec<Probe> = (0..2)
            .map(|_| Probe {
                acquire: lock.lock_bounded(1, 2).unwrap(),
                flag: Arc::default(),
            })
            .collect();
        assert_eq!(
            lock.lock_bounded(1, 2).err(),
            Some(QueueFull { waiters_max: 2 })
        );
        assert_eq!(lock.waiters(), 2, "the refused call queued nothing");
        assert_eq!(lock.metrics().queue_full, 1);
        assert!(
            lock.lock_bounded(2, 0).is_ok(),
            "other keys are not affected"
        );
        assert!(lock.lock_bounded(1, 3).is_ok(), "the bound is the caller's");
        drop(holder);
        drop(waiting.remove(0).ready());
        assert!(
            lock.lock_bounded(1, 0).is_err(),
            "held by the second waiter"
        );
    }

    #[test]
    fn finding_a_waiter_deep_in_a_long_queue_compares_few_waiters() {
        let lock = KeyedLock::new();
        let holder = ready_now(lock.lock(1));
        let mut waiters: Vec<Probe> = (0..10_000).map(|_| Probe::new(&lock, 1)).collect();
        PROBES.with(|p| p.set(0));
        // Poll the last waiter and cancel one in the middle: each finds its place
        // in the queue by binary search (a scan would compare ~15,000 waiters).
        assert!(waiters[9_999].pending());
        drop(waiters.remove(5_000));
        let probes = PROBES.with(|p| p.get());
        assert!(probes > 0, "both lookups went through `position`");
        assert!(probes <= 2 * 15, "{probes} waiters compared");
        drop(holder);
        assert_eq!(lock.waiters(), 9_998);
        // Order is kept: the head is granted first, then the next.
        assert!(waiters[1].pending());
        drop(waiters.remove(0).ready());
        assert!(waiters[1].pending());
        drop(waiters.remove(0).ready());
    }

    #[test]
    fn unsynchronized_lock_excludes_nothing() {
        let lock = KeyedLock::unsynchronized();
        let a = ready_now(lock.lock(1));
        let b = ready_now(lock.lock(1));
        assert!(lock.try_lock(1).is_some());
        assert!(lock.is_empty());
        drop((a, b));
    }
}
