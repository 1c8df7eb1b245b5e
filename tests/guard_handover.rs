//! A guard lives until its change is durable or refused.
//!
//! Over SQLite and without the HTTP layer: a charge whose future is dropped
//! while its change waits in the writer's queue must keep its user locked until
//! the writer has answered for that change. Otherwise the next charge of the
//! user is granted the lock at once, reads the balance from before the dropped
//! change, and commits over it: a lost update.

use std::future::Future;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use pointlock_core::{Amount, PointService, Policy, UserId};
use pointlock_server::clock::SystemClock;
use pointlock_store::{SqliteOptions, SqliteStore};

fn id(raw: u64) -> UserId {
    UserId::new(raw).unwrap()
}

fn amount(raw: u64) -> Amount {
    Amount::new(raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_charge_keeps_its_user_locked_until_the_store_answers() {
    let dir = tempfile::tempdir().unwrap();
    // The writer holds a lone change for a 200 ms look at its queue before it
    // commits it: the first charge's change is still queued when its future is
    // dropped (the test waits for that signal, not for time).
    let options = SqliteOptions {
        batch_ops_max: 2,
        batch_wait: Duration::from_secs(30),
        batch_idle: Duration::from_millis(200),
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(dir.path().join("p.db"), options).unwrap());
    let svc = Arc::new(PointService::new(
        Arc::clone(&store),
        Policy::default(),
        Arc::new(SystemClock::default()),
    ));

    // Charge 100 and poll it until its change is queued, then drop it (a client
    // that went away; an embedder's select! with a timeout).
    {
        let guard = Arc::new(svc.lock().lock(id(1)).await);
        let mut first = Box::pin(svc.charge(Arc::clone(&guard), amount(100)));
        let waker = std::task::Waker::noop();
        for _ in 0..1_000 {
            assert!(first
                .as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_pending());
            if store.queued_ops() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(store.queued_ops(), 1, "the first change reached the writer");
        // The caller gives up: its future and its own guard are dropped.
    }

    // The next charge of the same user: it may only run once the first change
    // has been answered, and must then build on it.
    let guard = Arc::new(svc.lock().lock(id(1)).await);
    let second = svc.charge(Arc::clone(&guard), amount(10)).await.unwrap();
    drop(guard);

    assert_eq!(second.point, 110, "the second charge saw the first one");
    let history = svc.histories(id(1)).await.unwrap();
    let sum: u64 = history.iter().map(|h| h.amount.get()).sum();
    assert_eq!(history.len(), 2);
    assert_eq!(
        svc.point(id(1)).await.unwrap().point,
        sum,
        "balance == history"
    );
}
