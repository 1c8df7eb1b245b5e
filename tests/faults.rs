//! Fault injection through real HTTP on every store: a commit that fails
//! (each kind of store error, before or after the store applied it),
//! panics, or stalls past the request deadline. For each: the
//! client gets a coded answer, the user's lock is released, nothing is
//! half-applied (the balance replays from the history), and the next request
//! of that user is served.
//!
//! The SQLite-specific faults (a full disk, a failed COMMIT/fsync and its
//! fail-stop) are in `server/src/store/sqlite/tests.rs` and
//! `tests/disk_full.rs`; PostgreSQL going down and coming back mid-load
//! is in `tests/multi_instance.rs`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use pointlock::core::{PointStore, StoreErrorKind};
use pointlock::server::AppOptions;
use support::{Backend, Fault, ProbeStore, TestServer};

fn options() -> AppOptions {
    AppOptions {
        request_timeout: Duration::from_millis(400),
        lock_timeout: Duration::from_millis(300),
        ..AppOptions::default()
    }
}

/// What a fault must come to: status, code, and whether the charge applied.
struct Case {
    fault: Fault,
    status: StatusCode,
    code: &'static str,
    applied: bool,
}

/// The cases; `deciding`: over a deciding store (PostgreSQL), which answers a
/// conflict itself, only as its last resort, when nothing changed.
fn cases(deciding: bool) -> Vec<Case> {
    use StoreErrorKind::*;
    vec![
        Case {
            fault: Fault::Fail(Failed),
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "STORE_ERROR",
            applied: false,
        },
        Case {
            fault: Fault::Fail(Unavailable),
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "STORE_UNAVAILABLE",
            applied: false,
        },
        Case {
            fault: Fault::Fail(OutcomeUnknown),
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "STORE_OUTCOME_UNKNOWN",
            applied: false,
        },
        // The store applied it and then failed to say so: "unknown" is the
        // truth, and the history shows it.
        Case {
            fault: Fault::FailAfter(OutcomeUnknown),
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "STORE_OUTCOME_UNKNOWN",
            applied: true,
        },
        // A refused condition is retried by the service: applied once. A
        // deciding store's conflict is final: 503, nothing changed.
        if deciding {
            Case {
                fault: Fault::Fail(Conflict),
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "WRITE_CONFLICT",
                applied: false,
            }
        } else {
            Case {
                fault: Fault::Fail(Conflict),
                status: StatusCode::OK,
                code: "",
                applied: true,
            }
        },
        Case {
            fault: Fault::Panic,
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "INTERNAL",
            applied: false,
        },
        // Past the request deadline: 408, and the change, already with the
        // store, completes under the lock.
        Case {
            fault: Fault::Delay(Duration::from_millis(700)),
            status: StatusCode::REQUEST_TIMEOUT,
            code: "REQUEST_TIMEOUT",
            applied: true,
        },
    ]
}

async fn each_fault_is_answered_with_its_code_and_leaves_a_consistent_user_on(backend: Backend) {
    let deciding = backend.decides();
    for (index, case) in cases(deciding).into_iter().enumerate() {
        // Commit 1 is a clean charge of 1; the fault hits commit 2, a charge of 10.
        let store = ProbeStore::on(backend, 0)
            .await
            .with_fault(2, case.fault.clone());
        let server = TestServer::start(store, options()).await;
        assert_eq!(server.charge(1, 1).await.status, StatusCode::OK);
        let reply = server.charge(1, 10).await;
        let what = format!("case {index} ({:?})", case.fault);
        assert_eq!(reply.status, case.status, "{what}: {}", reply.json);
        if !case.code.is_empty() {
            assert_eq!(reply.json["code"], case.code, "{what}");
        }
        // The lock is released and the change settled (after the background
        // completion of a 408; on a pipelined store the user is released
        // before its change is durable).
        server.wait_until_settled(&what).await;
        let expected = if case.applied { 11 } else { 1 };
        assert_eq!(server.assert_history_replays(1).await, expected, "{what}");
        // Service resumes: the next change of that user is served.
        let next = server.charge(1, 100).await;
        assert_eq!(next.status, StatusCode::OK, "{what}: {}", next.json);
        assert_eq!(next.json["point"], expected + 100, "{what}");
        assert!(server.lock.is_empty(), "{what}");
    }
}

async fn faults_under_concurrent_load_leave_every_user_consistent_on(backend: Backend) {
    // 6 users x 20 concurrent charges, each of a unique amount; faults of every
    // kind scattered over the commits.
    let mut store = ProbeStore::on(backend, 2).await;
    let deciding = store.deciding().is_some();
    for (n, case) in [3, 9, 15, 21, 27, 33, 39].into_iter().zip(cases(deciding)) {
        store = store.with_fault(n, case.fault);
    }
    // Patient enough that most charges reach the store (a lock timeout is a
    // refusal too, but commits the fault plan counts on must happen).
    let patient = AppOptions {
        request_timeout: Duration::from_secs(5),
        lock_timeout: Duration::from_secs(4),
        ..AppOptions::default()
    };
    let server = Arc::new(TestServer::start(store, patient).await);
    let mut tasks = Vec::new();
    for user in 1..=6u64 {
        for i in 0..20u64 {
            let amount = 1 + user * 20 + i; // unique per (user, i); at most 2,820 a user
            tasks.push((user, amount, server.spawn_charge(user, amount)));
        }
    }
    let mut acked: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut refused: BTreeSet<(u64, u64)> = BTreeSet::new();
    for (user, amount, task) in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            StatusCode::OK => {
                acked.insert((user, amount));
            }
            // Coded refusals that promise nothing changed.
            StatusCode::SERVICE_UNAVAILABLE => {
                let code = reply.json["code"].as_str().unwrap();
                assert!(
                    ["STORE_UNAVAILABLE", "LOCK_TIMEOUT"].contains(&code)
                        || (deciding && code == "WRITE_CONFLICT"),
                    "{}",
                    reply.json
                );
                refused.insert((user, amount));
            }
            StatusCode::INTERNAL_SERVER_ERROR if reply.json["code"] != "STORE_OUTCOME_UNKNOWN" => {
                let code = reply.json["code"].as_str().unwrap();
                assert!(
                    ["STORE_ERROR", "INTERNAL"].contains(&code),
                    "{}",
                    reply.json
                );
                refused.insert((user, amount));
            }
            // Unknown outcomes: either way is allowed; the history decides.
            StatusCode::INTERNAL_SERVER_ERROR | StatusCode::REQUEST_TIMEOUT => {}
            other => panic!("unexpected {other}: {}", reply.json),
        }
    }
    server.wait_until_settled("every user released").await;
    for user in 1..=6u64 {
        server.assert_history_replays(user).await;
        let rows: BTreeSet<(u64, u64)> = server
            .history(user)
            .await
            .iter()
            .map(|row| (user, row["amount"].as_u64().unwrap()))
            .collect();
        for ack in acked.iter().filter(|(u, _)| *u == user) {
            assert!(rows.contains(ack), "acknowledged {ack:?} is missing");
        }
        for refusal in refused.iter().filter(|(u, _)| *u == user) {
            assert!(!rows.contains(refusal), "refused {refusal:?} was applied");
        }
    }
    assert!(server.store.commits() >= 39, "every fault was reached");
}

on_every_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    each_fault_is_answered_with_its_code_and_leaves_a_consistent_user
        / sqlite_each_fault_is_answered_with_its_code_and_leaves_a_consistent_user
        / pg_each_fault_is_answered_with_its_code_and_leaves_a_consistent_user
        => each_fault_is_answered_with_its_code_and_leaves_a_consistent_user_on;
    faults_under_concurrent_load_leave_every_user_consistent
        / sqlite_faults_under_concurrent_load_leave_every_user_consistent
        / pg_faults_under_concurrent_load_leave_every_user_consistent
        => faults_under_concurrent_load_leave_every_user_consistent_on;
}
