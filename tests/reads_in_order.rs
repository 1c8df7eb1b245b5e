//! A read keeps its place in the user's order on the pipelined store: a GET
//! that takes the user's lock after a charge shows that charge, answered once
//! it is durable, although the lock passed on at sequencing (see
//! docs/concurrency.md, "Reads").
//!
//! The SQLite writer is held at its gate (the store's test-util fault), so
//! "sequenced, not durable" lasts until the test opens it: no sleeps. The
//! plain durable read of the same moment shows what a GET answered when it
//! read durable state at its turn: the balance before the charge.

mod support;

use std::sync::Arc;

use pointlock::core::{KeyedLock, PointStore, UserId};
use pointlock::server::AppOptions;
use pointlock::store::sqlite::Gate;
use pointlock::store::{SqliteOptions, SqliteStore};
use support::{ProbeStore, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_after_a_charge_shows_it_once_durable_on_the_pipelined_store() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let options = SqliteOptions {
        gate: Some(Arc::clone(&gate)),
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(dir.path().join("p.db"), options).unwrap());
    assert!(
        store.is_pipelined(),
        "the default SQLite store is pipelined"
    );
    let probe = ProbeStore::over(Box::new(Arc::clone(&store)));
    let server = Arc::new(TestServer::start(probe, AppOptions::default()).await);
    let user = UserId::new(1).unwrap();

    gate.close();
    let charge = server.spawn_charge(1, 100);
    // Sequenced and the user released; not durable (the writer waits at the gate).
    server
        .wait_for_lock("the charge is sequenced", |lock| {
            store.sequenced_users() == 1 && lock.is_empty()
        })
        .await;
    assert!(
        !charge.is_finished(),
        "a charge answered before it was durable"
    );

    let get = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.get("/point/1").await })
    };
    let histories = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.get("/point/1/histories").await })
    };
    // Both reads have taken and released the user's lock (after the charge).
    server
        .wait_for_lock("both reads had their turn", |lock: &KeyedLock<UserId>| {
            lock.metrics().acquisitions >= 3 && lock.is_empty()
        })
        .await;
    // At this moment durable state still shows the balance before the charge:
    // a read of durable state at its turn would answer 0.
    assert_eq!(store.user_point(user).await.unwrap(), None);

    gate.open();
    let reply = charge.await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.json["point"].as_u64()),
        (200, Some(100))
    );
    let reply = get.await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.json["point"].as_u64()),
        (200, Some(100)),
        "a GET queued behind a charge must show it: {}",
        reply.json
    );
    let reply = histories.await.unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    let amounts: Vec<u64> = reply
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["amount"].as_u64().unwrap())
        .collect();
    assert_eq!(
        amounts,
        [100],
        "the history queued behind the charge shows it"
    );
}
