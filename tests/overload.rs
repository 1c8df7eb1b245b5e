//! The process-wide bound on requests in flight (`--max-in-flight`), over real
//! loopback HTTP: a request beyond it is answered at once with 503
//! `SERVER_OVERLOADED` and `Retry-After`, whatever its user, and changes
//! nothing; the requests inside it are served; `/health` and `/metrics` still
//! answer. Requests are held in the stack by a gate in front of the store's
//! commits, and their arrival is signalled by the lock's gauges.

mod support;

use std::sync::Arc;

use http::StatusCode;
use pointlock::server::AppOptions;
use support::{patient, Backend, ProbeStore, TestServer};
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_bound_every_user_is_refused_at_once_and_nothing_changes() {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::on(Backend::Memory, 0)
        .await
        .with_gate(gate.clone());
    let options = AppOptions {
        max_in_flight: 3,
        ..patient()
    };
    let server = Arc::new(TestServer::start(store, options).await);
    // Three users' charges fill the stack, each at the gate holding its user.
    let held: Vec<_> = (1..=3).map(|user| server.spawn_charge(user, 10)).collect();
    server
        .wait_for_lock("three users held", |l| l.len() == 3)
        .await;

    // A fourth user, free and never seen: refused by the bound alone.
    for _ in 0..2 {
        let refused = server.charge(4, 5).await;
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            refused.json
        );
        assert_eq!(refused.json["code"], "SERVER_OVERLOADED");
        assert_eq!(refused.headers["retry-after"], "1");
        assert!(refused.headers.contains_key("x-request-id"));
    }
    let read = server.get("/point/4").await;
    assert_eq!(read.json["code"], "SERVER_OVERLOADED", "{}", read.json);
    assert_eq!(
        server.lock.len(),
        3,
        "the refused requests took no lock and queued nothing"
    );
    // The operator still sees the process.
    let (status, _, health) = server.get_text("/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let (status, _, metrics) = server.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("pointlock_http_in_flight 3"),
        "three in the stack: {metrics}"
    );
    assert!(
        metrics.contains("pointlock_http_in_flight_refused_total 3"),
        "{metrics}"
    );

    gate.add_permits(1_000);
    for task in held {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    // The bound frees with the answers: the fourth user is served now, and
    // its refused charges left nothing behind.
    assert_eq!(
        server.balance(4).await,
        0,
        "the refused charges changed nothing"
    );
    assert!(server.history(4).await.is_empty());
    assert_eq!(server.charge(4, 5).await.status, StatusCode::OK);
    assert_eq!(server.balance(4).await, 5);
}
