//! What each keyed lock keeps after its keys go idle: hold 100,000 distinct keys
//! at once, release them all, and count the live heap bytes the lock still owns
//! (exactly, with a counting global allocator) and, where the lock can say, its
//! entries. The same contenders as `benches/keyed_lock.rs` that keep a map of
//! keys: keylock, `keyed-lock` 0.2, `key-mutex` 0.1, `lockable` 0.2 and a
//! `DashMap` of tokio mutexes removed when idle (a bare `tokio::sync::Mutex` has
//! one key and no map).
//!
//! Run: `cargo bench -p keylock --bench lock_residue` (a few seconds). It prints a
//! markdown table; a measurement, not a test.

use std::future::Future;
use std::sync::Arc;

use cap::Cap;
use dashmap::DashMap;
use keylock::KeyedLock;

/// Counts live heap bytes exactly, over the system allocator.
#[global_allocator]
static GLOBAL: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

const KEYS: u64 = 100_000;

/// Heap bytes allocated and not yet freed since `start`.
fn live_since(start: usize) -> i64 {
    GLOBAL.allocated() as i64 - start as i64
}

/// One contender: hold every key of `keys` at once, then release them all.
/// Returns the live heap bytes while all were held, and the entries left
/// afterwards (`None`: the lock cannot say).
trait Residue {
    fn name(&self) -> &'static str;
    fn hold_all_then_release(
        &self,
        keys: std::ops::Range<u64>,
        start: usize,
    ) -> impl Future<Output = (i64, Option<usize>)>;
}

struct Keylock(KeyedLock<u64>);

impl Residue for Keylock {
    fn name(&self) -> &'static str {
        "keylock"
    }

    async fn hold_all_then_release(
        &self,
        keys: std::ops::Range<u64>,
        start: usize,
    ) -> (i64, Option<usize>) {
        let mut guards = Vec::with_capacity(KEYS as usize);
        for key in keys {
            guards.push(self.0.lock(key).await);
        }
        let peak = live_since(start);
        drop(guards);
        (peak, Some(self.0.len()))
    }
}

struct KeyedLockCrate(Arc<keyed_lock::r#async::KeyedLock<u64>>);

impl Residue for KeyedLockCrate {
    fn name(&self) -> &'static str {
        "keyed_lock"
    }

    async fn hold_all_then_release(
        &self,
        keys: std::ops::Range<u64>,
        start: usize,
    ) -> (i64, Option<usize>) {
        let mut guards = Vec::with_capacity(KEYS as usize);
        for key in keys {
            guards.push(self.0.lock_owned(key).await);
        }
        let peak = live_since(start);
        drop(guards);
        (peak, None)
    }
}

struct KeyMutexCrate(key_mutex::tokio::KeyMutex<u64, ()>);

impl Residue for KeyMutexCrate {
    fn name(&self) -> &'static str {
        "key_mutex"
    }

    async fn hold_all_then_release(
        &self,
        keys: std::ops::Range<u64>,
        start: usize,
    ) -> (i64, Option<usize>) {
        let mut guards = Vec::with_capacity(KEYS as usize);
        for key in keys {
            guards.push(self.0.lock(key).await);
        }
        let peak = live_since(start);
        drop(guards);
        (peak, Some(self.0.len()))
    }
}

struct Lockable(lockable::LockPool<u64>);

impl Residue for Lockable {
    fn name(&self) -> &'static str {
        "lockable"
    }

    async fn hold_all_then_release(
        &self,
        keys: std::ops::Range<u64>,
        start: usize,
    ) -> (i64, Option<usize>) {
        let mut guards = Vec::with_capacity(KEYS as usize);
        for key in keys {
            guards.push(self.0.async_lock(key).await);
        }
        let peak = live_since(start);
        drop(guards);
        (peak, Some(self.0.num_locked()))
    }
}

#[derive(Default)]
struct DashMapTokioMutex(DashMap<u64, Arc<tokio::sync::Mutex<()>>>);

impl Residue for DashMapTokioMutex {
    fn name(&self) -> &'static str {
        "dashmap_tokio_mutex"
    }

    async fn hold_all_then_release(
        &self,
        keys: std::ops::Range<u64>,
        start: usize,
    ) -> (i64, Option<usize>) {
        let mut held = Vec::with_capacity(KEYS as usize);
        for key in keys {
            let mutex = Arc::clone(&self.0.entry(key).or_default());
            let guard = Arc::clone(&mutex).lock_owned().await;
            held.push((key, mutex, guard));
        }
        let peak = live_since(start);
        for (key, mutex, guard) in held {
            drop(guard);
            // The map's reference and ours: nobody else waits on it.
            self.0.remove_if(&key, |_, m| Arc::strong_count(m) == 2);
            drop(mutex);
        }
        (peak, Some(self.0.len()))
    }
}

/// Measure `lock` twice on fresh keys (the second round shows whether what the
/// first left behind is reused or grows).
async fn measure<R: Residue>(lock: R) {
    let start = GLOBAL.allocated();
    let mut row = format!("| {} |", lock.name());
    for round in 0..2_u64 {
        let keys = round * 10 * KEYS..round * 10 * KEYS + KEYS;
        let (peak, entries) = lock.hold_all_then_release(keys, start).await;
        let after = live_since(start);
        let entries = entries.map_or("n/a".to_owned(), |n| n.to_string());
        row += &format!(" {} | {} | {entries} |", peak / 1024, after / 1024);
    }
    println!("{row}");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    println!(
        "lock_residue: {KEYS} distinct keys held at once, then released; twice, on fresh keys"
    );
    println!(
        "live heap in KiB since the lock was created (exact); entries as the lock reports them\n"
    );
    println!("| lock | round 1: held | round 1: after | entries after | round 2: held | round 2: after | entries after |");
    println!("|---|---|---|---|---|---|---|");
    runtime.block_on(async {
        measure(Keylock(KeyedLock::new())).await;
        measure(KeyedLockCrate(Arc::new(
            keyed_lock::r#async::KeyedLock::new(),
        )))
        .await;
        measure(KeyMutexCrate(key_mutex::tokio::KeyMutex::new())).await;
        measure(Lockable(lockable::LockPool::new())).await;
        measure(DashMapTokioMutex::default()).await;
    });
}
