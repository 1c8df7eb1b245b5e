//! Durable charge throughput: the SQLite store with and without group commit
//! against the memory store, in the same run (compare ratios, not absolutes).
//!
//! Each iteration runs `ops` charges of 1 point through `PointService` with the
//! per-user lock, `IN_FLIGHT` at a time on a multi-thread runtime, spread over
//! `USERS` users. The SQLite files live in a temp dir. The SQLite stores use
//! the default options (balance cache on) unless the case name says otherwise;
//! at 512 in flight batches may hold 512 changes. After the benchmarks each
//! SQLite store's batch statistics are printed.
//!
//! ```sh
//! cargo bench --bench sqlite_store
//! ```

// criterion_group! and criterion_main! make public functions without docs.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pointlock_core::domain::VALUE_MAX;
use pointlock_core::{Amount, ManualClock, MemoryStore, PointService, PointStore, Policy, UserId};
use pointlock_store::{SqliteOptions, SqliteStore};

const USERS: u64 = 10_000;
const IN_FLIGHT: u64 = 64;
/// A heavier load: batches can only be as large as the changes in flight.
const IN_FLIGHT_MANY: u64 = 512;

type Service = PointService<Arc<dyn PointStore>>;

fn service(store: Arc<dyn PointStore>) -> Arc<Service> {
    Arc::new(PointService::new(
        store,
        Policy::new(VALUE_MAX),
        Arc::new(ManualClock::new(0)),
    ))
}

/// `ops` charges, `in_flight` at a time, users taken round-robin from `next`.
async fn charges(service: Arc<Service>, next: Arc<AtomicU64>, ops: u64, in_flight: u64) {
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let (service, next, done) =
                (Arc::clone(&service), Arc::clone(&next), Arc::clone(&done));
            tokio::spawn(async move {
                let one = Amount::new(1).expect("1 is a valid amount");
                while done.fetch_add(1, Ordering::Relaxed) < ops {
                    let user = UserId::new(1 + next.fetch_add(1, Ordering::Relaxed) % USERS)
                        .expect("a valid id");
                    let held = Arc::new(service.lock().lock(user).await);
                    service.charge(held, one).await.expect("charge");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("sqlite_store");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.warm_up_time(Duration::from_secs(1));

    let memory: Arc<dyn PointStore> = Arc::new(MemoryStore::new());
    let sqlite = |name: &str, options: SqliteOptions| -> Arc<SqliteStore> {
        let _guard = runtime.enter();
        Arc::new(SqliteStore::open(dir.path().join(name), options).expect("open"))
    };
    let grouped = sqlite("grouped.db", SqliteOptions::default());
    let uncached = sqlite(
        "uncached.db",
        SqliteOptions {
            balance_cache_max: 0,
            ..SqliteOptions::default()
        },
    );
    let single = sqlite("single.db", SqliteOptions::default().without_group_commit());
    // At 512 in flight a batch of up to 512 changes can form.
    let many = sqlite(
        "many.db",
        SqliteOptions {
            batch_ops_max: IN_FLIGHT_MANY as usize,
            ..SqliteOptions::default()
        },
    );
    let cases: [(&str, Arc<dyn PointStore>, u64, u64); 6] = [
        ("memory", Arc::clone(&memory), 10_000, IN_FLIGHT),
        ("sqlite_group_commit", grouped.clone(), 10_000, IN_FLIGHT),
        (
            "sqlite_group_commit_no_cache",
            uncached.clone(),
            10_000,
            IN_FLIGHT,
        ),
        ("sqlite_no_group_commit", single.clone(), 500, IN_FLIGHT),
        ("memory_512_in_flight", memory, 10_000, IN_FLIGHT_MANY),
        (
            "sqlite_group_commit_512_in_flight",
            many.clone(),
            10_000,
            IN_FLIGHT_MANY,
        ),
    ];
    for (name, store, ops, in_flight) in cases {
        let svc = service(store);
        let next = Arc::new(AtomicU64::new(0));
        group.throughput(Throughput::Elements(ops));
        group.bench_function(BenchmarkId::new("charge", name), |b| {
            b.to_async(&runtime)
                .iter(|| charges(Arc::clone(&svc), Arc::clone(&next), ops, in_flight));
        });
    }
    group.finish();
    for (name, store) in [
        ("group commit, 64 in flight", grouped),
        (
            "group commit without the balance cache, 64 in flight",
            uncached,
        ),
        ("no group commit, 64 in flight", single),
        ("group commit, 512 in flight", many),
    ] {
        let stats = store.stats();
        let mean = stats.ops as f64 / stats.batches.max(1) as f64;
        eprintln!(
            "sqlite {name}: {} batches, {} ops, mean batch {mean:.1}, max batch {}, batch sizes by power of two (1, 2-3, 4-7, ... 256+): {:?}",
            stats.batches, stats.ops, stats.batch_ops_max, stats.batch_ops_log2
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
