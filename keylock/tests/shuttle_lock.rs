//! Model checking of the keyed lock's state machine with shuttle.
//!
//! Shuttle runs the tasks below under many randomized and PCT schedules, choosing at
//! every await which task runs next. Each schedule must keep: at most one holder per
//! key; grants in queue order for the waiters that were not cancelled; no stranded
//! waiter (shuttle reports a deadlock if a task never finishes); an empty table at
//! the end. The lock's shard mutexes are plain `std` mutexes: their critical
//! sections contain no await, so each one is atomic in every schedule shuttle runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use keylock::KeyedLock;
use shuttle::future::{block_on, spawn, yield_now};

const KEYS: usize = 2;
const TASKS: usize = 5;

fn scenario() {
    let lock: KeyedLock<usize> = KeyedLock::new();
    let holders: Arc<[AtomicUsize; KEYS]> = Arc::new(Default::default());
    // Per key: the order in which `lock` was called, and the order of grants.
    let enqueued = Arc::new(Mutex::new(vec![Vec::new(); KEYS]));
    let granted = Arc::new(Mutex::new(vec![Vec::new(); KEYS]));

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let lock = lock.clone();
            let holders = Arc::clone(&holders);
            let enqueued = Arc::clone(&enqueued);
            let granted = Arc::clone(&granted);
            spawn(async move {
                let key = task % KEYS;
                let cancels = task == 2 || task == 3;
                yield_now().await;
                let mut acquire = {
                    // No await inside: atomic under shuttle.
                    let mut order = enqueued.lock().unwrap();
                    let acquire = lock.lock(key);
                    if !cancels {
                        order[key].push(task);
                    }
                    acquire
                };
                if cancels {
                    // Poll once, let others run, then walk away: the drop happens
                    // either while queued or after the lock was handed over.
                    let first =
                        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut acquire).poll(cx)))
                            .await;
                    yield_now().await;
                    drop(first);
                    drop(acquire);
                    return;
                }
                let guard = acquire.await;
                assert_eq!(
                    holders[key].fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders of key {key}"
                );
                granted.lock().unwrap()[key].push(task);
                yield_now().await;
                holders[key].fetch_sub(1, Ordering::SeqCst);
                drop(guard);
            })
        })
        .collect();

    block_on(async move {
        for t in tasks {
            t.await.expect("task panicked");
        }
    });

    assert_eq!(lock.len(), 0, "table not empty at the end");
    assert_eq!(lock.waiters(), 0);
    assert_eq!(
        *enqueued.lock().unwrap(),
        *granted.lock().unwrap(),
        "not FIFO"
    );
}

#[test]
fn keyed_lock_random_schedules() {
    shuttle::check_random(scenario, 2_000);
}

#[test]
fn keyed_lock_pct_schedules() {
    shuttle::check_pct(scenario, 2_000, 3);
}
