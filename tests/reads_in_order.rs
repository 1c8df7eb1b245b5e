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
use std::time::Duration;

use http::Method;
use pointlock::core::{KeyedLock, PointService, PointStore, Policy, UserId};
use pointlock::server::app::build_app;
use pointlock::server::clock::SystemClock;
use pointlock::server::AppOptions;
use pointlock::store::sqlite::Gate;
use pointlock::store::{SqliteOptions, SqliteStore};
use serde_json::Value;
use support::app::{drain, Served};
use support::http::client;

/// One request over HTTP: status and JSON body.
async fn send(addr: std::net::SocketAddr, method: Method, path: &str, body: &str) -> (u16, Value) {
    use http_body_util::{BodyExt, Full};
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let res = client().request(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Wait (bounded) until `done` holds: a signal, not a time.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for: {what}");
}

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
    let lock = KeyedLock::new();
    let svc = Arc::new(PointService::with_lock(
        Arc::clone(&store) as Arc<dyn PointStore>,
        Policy::default(),
        Arc::new(SystemClock::default()),
        lock.clone(),
    ));
    let served = Served::start(
        build_app(Arc::clone(&svc), &AppOptions::default()),
        drain(Duration::from_secs(5)),
    )
    .await;
    let addr = served.addr;
    let user = UserId::new(1).unwrap();

    gate.close();
    let charge = tokio::spawn(send(addr, Method::PATCH, "/point/1/charge", "100"));
    // Sequenced and the user released; not durable (the writer waits at the gate).
    until("the charge is sequenced", || {
        store.sequenced_users() == 1 && lock.is_empty()
    })
    .await;
    assert!(
        !charge.is_finished(),
        "a charge answered before it was durable"
    );

    let get = tokio::spawn(send(addr, Method::GET, "/point/1", ""));
    let histories = tokio::spawn(send(addr, Method::GET, "/point/1/histories", ""));
    // Both reads have taken and released the user's lock (after the charge).
    until("both reads had their turn", || {
        lock.metrics().acquisitions >= 3 && lock.is_empty()
    })
    .await;
    // At this moment durable state still shows the balance before the charge:
    // a read of durable state at its turn would answer 0.
    assert_eq!(svc.point(user).await.unwrap().point, 0);

    gate.open();
    let (status, body) = charge.await.unwrap();
    assert_eq!((status, body["point"].as_u64()), (200, Some(100)));
    let (status, body) = get.await.unwrap();
    assert_eq!(
        (status, body["point"].as_u64()),
        (200, Some(100)),
        "a GET queued behind a charge must show it: {body}"
    );
    let (status, body) = histories.await.unwrap();
    assert_eq!(status, 200);
    let amounts: Vec<u64> = body
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
