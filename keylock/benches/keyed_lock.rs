//! Criterion group `keyed_lock`: keylock's `KeyedLock` beside the keyed locks a
//! Rust user finds first and the usual hand-written ways of locking per key, in
//! one run, on the same inputs.
//!
//! - `uncontended/*`: acquire + release of one key, nothing else running.
//! - `uncontended_many_keys/*`: the same, each time on the next of 1,000,000 keys
//!   (every acquisition creates its key's entry, every release removes it).
//! - `same_key/{2,8,64}/*`: that many tasks on one key on a 2-worker runtime; the
//!   throughput unit is one hand-off (one acquire + release).
//! - `distinct_keys/{1,2}_threads/*`: 64 tasks, each on its own key, 1,000 rounds
//!   each, on a 1- or 2-worker runtime: throughput, and how it scales with cores.
//!
//! Contenders: `no_lock` (nothing: the cost and scaling of the loop and runtime
//! alone); `keylock`; the crates `keyed_lock` (`keyed-lock` 0.2, async, owned
//! guards), `key_mutex` (`key-mutex` 0.1, its tokio `KeyMutex`) and `lockable`
//! (`lockable` 0.2, `LockPool`); `tokio_mutex` (one pre-created
//! `tokio::sync::Mutex` for every key, the floor: no map at all);
//! `tokio_mutex_owned` (the same, locked with `lock_owned` for a `'static` guard
//! like keylock's); `tokio_mutex_per_key` (a pre-created mutex per key: nothing
//! shared, the scaling ceiling for `distinct_keys`); `std_map_of_tokio_mutex`
//! and `dashmap_tokio_mutex` (a map of `Arc<tokio::sync::Mutex<()>>` with
//! removal when idle, as written by hand).
//!
//! Run: `cargo bench -p keylock --bench keyed_lock` (about 5 minutes; `--
//! --warm-up-time 1 --measurement-time 3` to change criterion's times). Report
//! ratios within one run only.

// criterion_group! and criterion_main! make public functions without docs.
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use keylock::KeyedLock;

/// One way of locking per key: acquire `key`, release it.
trait Contender: Send + Sync + 'static {
    fn hold(&self, key: u64) -> impl Future<Output = ()> + Send;
}

impl Contender for KeyedLock<u64> {
    async fn hold(&self, key: u64) {
        drop(self.lock(key).await);
    }
}

/// No lock at all: what the runtime and the benchmark loop cost by themselves, and
/// how far they scale with threads (the ceiling for `distinct_keys`).
struct NoLock;

impl Contender for NoLock {
    async fn hold(&self, key: u64) {
        std::hint::black_box(key);
    }
}

/// One mutex for every key: what a per-key lock costs at least.
struct TokioMutex(tokio::sync::Mutex<()>);

impl Contender for TokioMutex {
    async fn hold(&self, _key: u64) {
        drop(self.0.lock().await);
    }
}

/// The same mutex behind an `Arc`, locked for an owned guard (`lock_owned`):
/// the floor for a lock whose guard must be `'static`, as a keyed lock's guard
/// held across a request's futures must be (keylock's guards are owned).
struct TokioMutexOwned(Arc<tokio::sync::Mutex<()>>);

impl Contender for TokioMutexOwned {
    async fn hold(&self, _key: u64) {
        drop(Arc::clone(&self.0).lock_owned().await);
    }
}

/// A pre-created tokio mutex per key (64 keys, each mutex on its own cache lines):
/// nothing shared between distinct keys, so `distinct_keys` shows how far
/// per-key work of about a lock's cost scales on this machine's cores.
struct TokioMutexPerKey(Vec<Padded>);

#[repr(align(128))]
#[derive(Default)]
struct Padded(tokio::sync::Mutex<()>);

impl Default for TokioMutexPerKey {
    fn default() -> Self {
        Self((0..64).map(|_| Padded::default()).collect())
    }
}

impl Contender for TokioMutexPerKey {
    async fn hold(&self, key: u64) {
        drop(self.0[(key % 64) as usize].0.lock().await);
    }
}

/// `Mutex<HashMap<K, Arc<tokio::Mutex>>>`, removing a key's mutex when nobody else
/// holds a reference to it.
#[derive(Default)]
struct StdMapOfTokioMutex(Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>);

impl Contender for StdMapOfTokioMutex {
    async fn hold(&self, key: u64) {
        let mutex = Arc::clone(self.0.lock().unwrap().entry(key).or_default());
        drop(mutex.lock().await);
        let mut map = self.0.lock().unwrap();
        // The map's reference and ours: nobody else waits on it.
        if Arc::strong_count(&mutex) == 2 {
            map.remove(&key);
        }
    }
}

#[derive(Default)]
struct DashMapTokioMutex(DashMap<u64, Arc<tokio::sync::Mutex<()>>>);

impl Contender for DashMapTokioMutex {
    async fn hold(&self, key: u64) {
        let mutex = Arc::clone(&self.0.entry(key).or_default());
        drop(mutex.lock().await);
        self.0.remove_if(&key, |_, m| Arc::strong_count(m) == 2);
    }
}

struct Lockable(lockable::LockPool<u64>);

impl Contender for Lockable {
    async fn hold(&self, key: u64) {
        drop(self.0.async_lock(key).await);
    }
}

/// The `keyed-lock` crate's async lock, for an owned guard.
struct KeyedLockCrate(Arc<keyed_lock::r#async::KeyedLock<u64>>);

impl Contender for KeyedLockCrate {
    async fn hold(&self, key: u64) {
        drop(self.0.lock_owned(key).await);
    }
}

/// The `key-mutex` crate's tokio `KeyMutex` (its guards are owned).
struct KeyMutexCrate(key_mutex::tokio::KeyMutex<u64, ()>);

impl Contender for KeyMutexCrate {
    async fn hold(&self, key: u64) {
        drop(self.0.lock(key).await);
    }
}

/// `tasks` tasks, each holding its key (`key_of(task)`) `rounds` times.
async fn run_tasks<C: Contender>(c: &Arc<C>, tasks: u64, rounds: u64, key_of: fn(u64) -> u64) {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let c = Arc::clone(c);
            tokio::spawn(async move {
                for _ in 0..rounds {
                    c.hold(key_of(task)).await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
}

/// Register one benchmark per contender with the same body.
macro_rules! each_contender {
    ($group:expr, $id:expr, $rt:expr, |$c:ident| $body:expr) => {{
        let no_lock = Arc::new(NoLock);
        let keylock = Arc::new(KeyedLock::<u64>::new());
        let keyed_lock = Arc::new(KeyedLockCrate(Arc::new(keyed_lock::r#async::KeyedLock::new())));
        let key_mutex = Arc::new(KeyMutexCrate(key_mutex::tokio::KeyMutex::new()));
        let lockable = Arc::new(Lockable(lockable::LockPool::new()));
        let tokio_mutex = Arc::new(TokioMutex(tokio::sync::Mutex::new(())));
        let tokio_mutex_owned = Arc::new(TokioMutexOwned(Arc::new(tokio::sync::Mutex::new(()))));
        let per_key = Arc::new(TokioMutexPerKey::default());
        let std_map = Arc::new(StdMapOfTokioMutex::default());
        let dashmap = Arc::new(DashMapTokioMutex::default());
        each_contender!(@one $group, $id, $rt, "no_lock", no_lock, |$c| $body);
        each_contender!(@one $group, $id, $rt, "keylock", keylock, |$c| $body);
        each_contender!(@one $group, $id, $rt, "keyed_lock", keyed_lock, |$c| $body);
        each_contender!(@one $group, $id, $rt, "key_mutex", key_mutex, |$c| $body);
        each_contender!(@one $group, $id, $rt, "lockable", lockable, |$c| $body);
        each_contender!(@one $group, $id, $rt, "dashmap_tokio_mutex", dashmap, |$c| $body);
        each_contender!(@one $group, $id, $rt, "std_map_of_tokio_mutex", std_map, |$c| $body);
        each_contender!(@one $group, $id, $rt, "tokio_mutex", tokio_mutex, |$c| $body);
        each_contender!(@one $group, $id, $rt, "tokio_mutex_owned", tokio_mutex_owned, |$c| $body);
        each_contender!(@one $group, $id, $rt, "tokio_mutex_per_key", per_key, |$c| $body);
    }};
    (@one $group:expr, $id:expr, $rt:expr, $name:expr, $contender:expr, |$c:ident| $body:expr) => {{
        let $c = $contender;
        $group.bench_function(BenchmarkId::new($id, $name), |b| {
            b.to_async(&$rt).iter(|| $body)
        });
    }};
}

/// Keys `uncontended_many_keys` cycles through.
const MANY_KEYS: u64 = 1_000_000;

fn keyed_lock(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("keyed_lock");
    common::configure(&mut group);

    let single = common::runtime(1);
    group.throughput(Throughput::Elements(1));
    each_contender!(group, "uncontended", single, |c| {
        let c = Arc::clone(&c);
        async move { c.hold(1).await }
    });
    let next = Arc::new(AtomicU64::new(0));
    each_contender!(group, "uncontended_many_keys", single, |c| {
        let c = Arc::clone(&c);
        let key = next.fetch_add(1, Ordering::Relaxed) % MANY_KEYS;
        async move { c.hold(key).await }
    });

    let two = common::runtime(2);
    for tasks in [2_u64, 8, 64] {
        group.throughput(Throughput::Elements(tasks * 10));
        each_contender!(group, format!("same_key/{tasks}"), two, |c| {
            let c = Arc::clone(&c);
            async move { run_tasks(&c, tasks, 10, |_| 1).await }
        });
    }

    for workers in [1_usize, 2] {
        let rt = common::runtime(workers);
        // 1,000 rounds per task, so spawning and joining the tasks is a small part.
        group.throughput(Throughput::Elements(64 * 1_000));
        each_contender!(group, format!("distinct_keys/{workers}_threads"), rt, |c| {
            let c = Arc::clone(&c);
            async move { run_tasks(&c, 64, 1_000, |task| task).await }
        });
    }
    group.finish();
}

criterion_group!(benches, keyed_lock);
criterion_main!(benches);
