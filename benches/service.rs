//! Criterion group `service`: one wallet operation through [`PointService`] on the
//! memory store, the user's lock included, against the same operation on the bare
//! store (what the service adds: lock, policy check, read-before-write).
//!
//! - `charge/{store_only,locked}` and `use/{store_only,locked}`: one operation on one
//!   user, nothing else running (a single-thread runtime).
//! - `charge_spread/{1,2}_threads`: 64 tasks charging 64 users, 100 each, through
//!   the service with the lock: throughput and how it scales with cores.
//! - `charge_hot_user`: 64 tasks charging one user, 100 each: every operation is a
//!   lock hand-off (compare with `charge_spread/2_threads`).
//!
//! Run: `cargo bench --bench service`. Report ratios within one run only.

// criterion_group! and criterion_main! make public functions without docs.
#![allow(missing_docs)]

// The criterion settings every bench shares, kept once with the lock's benches.
#[path = "../keylock/benches/common/mod.rs"]
mod common;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pointlock::core::{
    Amount, Change, KeyedLock, ManualClock, MemoryStore, PointService, PointStore, Policy,
    TransactionType, UserId,
};

type Service = PointService<Arc<MemoryStore>>;

fn service() -> Arc<Service> {
    service_over(Arc::new(MemoryStore::new()))
}

fn service_over(store: Arc<MemoryStore>) -> Arc<Service> {
    // A policy cap high enough that no benchmark ever reaches it.
    let policy = Policy::new(u64::MAX / 2);
    Arc::new(PointService::new(
        store,
        policy,
        Arc::new(ManualClock::new(0)),
    ))
}

fn user(raw: u64) -> UserId {
    UserId::new(raw).expect("valid id")
}

fn one() -> Amount {
    Amount::new(1).expect("valid amount")
}

async fn locked(svc: &Service, id: u64, kind: TransactionType) {
    let held = Arc::new(svc.lock().lock(user(id)).await);
    let result = match kind {
        TransactionType::Charge => svc.charge(held, one()).await,
        TransactionType::Use => svc.use_points(held, one()).await,
    };
    result.expect("within policy");
}

/// Give user 1 a balance no benchmark can use up, so `use` never fails.
async fn seed(svc: &Service) {
    let held = Arc::new(svc.lock().lock(user(1)).await);
    let plenty = Amount::new(1 << 40).expect("valid amount");
    svc.charge(held, plenty).await.expect("within policy");
}

/// The store alone: read the balance, commit the new one (no lock, no policy).
/// A change must carry a guard: it comes from a lock that excludes nothing (a
/// counter bump), so this measures the store, the change and its `Arc`.
async fn store_only(
    store: &MemoryStore,
    bypass: &KeyedLock<UserId>,
    id: u64,
    kind: TransactionType,
) {
    let balance = store
        .user_point(user(id))
        .await
        .expect("read")
        .map_or(0, |p| p.point);
    let point = match kind {
        TransactionType::Charge => balance + 1,
        TransactionType::Use => balance - 1,
    };
    let held = Arc::new(bypass.lock(user(id)).await);
    let change = Change::for_tests(held, Some(balance), point, kind, one(), 0);
    store.commit(change).await.expect("commit");
}

/// `tasks` tasks, each charging its user (`user_of(task)`) `rounds` times.
async fn charge_tasks(svc: &Arc<Service>, tasks: u64, rounds: u64, user_of: fn(u64) -> u64) {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let svc = Arc::clone(svc);
            tokio::spawn(async move {
                for _ in 0..rounds {
                    locked(&svc, user_of(task), TransactionType::Charge).await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
}

fn service_group(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("service");
    common::configure(&mut group);

    let single = common::runtime(1);
    group.throughput(Throughput::Elements(1));
    for (name, kind) in [
        ("charge", TransactionType::Charge),
        ("use", TransactionType::Use),
    ] {
        let store = Arc::new(MemoryStore::new());
        let svc = service_over(Arc::clone(&store));
        single.block_on(seed(&svc));
        let bypass = KeyedLock::unsynchronized();
        group.bench_function(BenchmarkId::new(name, "store_only"), |b| {
            b.to_async(&single)
                .iter(|| store_only(&store, &bypass, 1, kind))
        });
        single.block_on(seed(&svc));
        group.bench_function(BenchmarkId::new(name, "locked"), |b| {
            b.to_async(&single).iter(|| locked(&svc, 1, kind))
        });
    }

    group.throughput(Throughput::Elements(64 * 100));
    for workers in [1_usize, 2] {
        let rt = common::runtime(workers);
        let svc = service();
        group.bench_function(
            BenchmarkId::new("charge_spread", format!("{workers}_threads")),
            |b| {
                b.to_async(&rt)
                    .iter(|| charge_tasks(&svc, 64, 100, |task| task + 1))
            },
        );
    }
    let rt = common::runtime(2);
    let svc = service();
    group.bench_function("charge_hot_user", |b| {
        b.to_async(&rt).iter(|| charge_tasks(&svc, 64, 100, |_| 1))
    });
    group.finish();
}

criterion_group!(benches, service_group);
criterion_main!(benches);
