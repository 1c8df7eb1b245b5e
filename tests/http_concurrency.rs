//! Concurrency over real loopback HTTP, against an in-process server whose memory
//! store has simulated latency (the race window the lock must close).
//!
//! Every scenario that could pass by luck has a signal instead of a sleep: commits
//! held at a gate, users meeting at a barrier, the lock's own queue gauges. The
//! negative controls run the first scenario without the lock (asserting that updates
//! ARE lost) and the barrier scenario against a globally serialised store.
//!
//! Every scenario runs three times: on the memory store (the plain name), on the
//! durable SQLite store in a temp dir (`sqlite_…`) and on a fresh database in the
//! test PostgreSQL cluster (`pg_…`, skipped without `POINTLOCK_TEST_PG_URL`
//! outside CI), with the same simulated latency added in front of the last two by
//! the probe.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use pointlock::core::{KeyedLock, PointStore, Policy};
use pointlock::server::AppOptions;
use support::{patient, Backend, ProbeStore, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Barrier, Semaphore};

/// Simulated store latency per call: 0..=LATENCY_MS ms.
const LATENCY_MS: u64 = 10;

async fn hundred_concurrent_charges(server: &Arc<TestServer>) -> (u64, BTreeSet<u64>) {
    let tasks: Vec<_> = (0..100).map(|_| server.spawn_charge(1, 10)).collect();
    let mut balances = BTreeSet::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        balances.insert(reply.json["point"].as_u64().unwrap());
    }
    (server.balance(1).await, balances)
}

async fn hundred_concurrent_charges_sum_exactly_with_distinct_running_balances_on(
    backend: Backend,
) {
    let server =
        Arc::new(TestServer::start(ProbeStore::on(backend, LATENCY_MS).await, patient()).await);
    let (balance, running) = hundred_concurrent_charges(&server).await;
    assert_eq!(balance, 1_000);
    let expected: BTreeSet<u64> = (1..=100).map(|i| i * 10).collect();
    assert_eq!(
        running, expected,
        "each response saw a distinct running balance"
    );
    assert_eq!(server.history(1).await.len(), 100);
    server.assert_history_replays(1).await;
    assert!(server.lock.is_empty());
}

async fn negative_control_without_lock_loses_updates_on(backend: Backend) {
    let options = AppOptions {
        lock_layer: false,
        ..patient()
    };
    // Both lines of defence off: no layer, the service's lock replaced by one
    // that excludes nothing, and the store's condition switched off.
    let server = Arc::new(
        TestServer::start_unconditional(
            ProbeStore::on(backend, LATENCY_MS).await,
            options,
            KeyedLock::unsynchronized(),
        )
        .await,
    );
    let (balance, running) = hundred_concurrent_charges(&server).await;
    assert_eq!(
        server.history(1).await.len(),
        100,
        "every charge was recorded"
    );
    assert!(
        balance < 1_000,
        "without the lock the race must lose updates, but the balance is {balance}"
    );
    assert!(running.len() < 100, "some responses saw the same balance");
}

async fn without_the_lock_the_condition_still_loses_no_update_on(backend: Backend) {
    // The lock off (no layer, a lock that excludes nothing), the store's
    // condition on: racing charges are refused and retried, or answered 503
    // WRITE_CONFLICT, never lost. (What the lock alone gives, order and no
    // conflicts, is gone: the conflicts counted below show it.) A deciding
    // store has no condition to fail: it decides each charge at its place.
    let options = AppOptions {
        lock_layer: false,
        ..patient()
    };
    let server = Arc::new(
        TestServer::start_with_lock(
            ProbeStore::on(backend, LATENCY_MS).await,
            options,
            KeyedLock::unsynchronized(),
        )
        .await,
    );
    let tasks: Vec<_> = (0..100).map(|_| server.spawn_charge(1, 10)).collect();
    let mut applied = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            StatusCode::OK => applied += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.json["code"], "WRITE_CONFLICT", "{}", reply.json);
                assert_eq!(reply.headers["retry-after"], "1");
            }
            other => panic!("unexpected {other}: {}", reply.json),
        }
    }
    assert!(applied > 0);
    assert_eq!(
        server.balance(1).await,
        10 * applied,
        "every 200 is in the balance"
    );
    assert_eq!(server.history(1).await.len() as u64, applied);
    server.assert_history_replays(1).await;
    let stats = server.get("/stats").await.json;
    let conflicts = stats["service"]["commitConflicts"].as_u64().unwrap();
    if server.store.deciding().is_some() {
        // A deciding store (PostgreSQL) decides each request on the state at
        // its place: nothing to refuse, every charge applies.
        assert_eq!(applied, 100, "a deciding store refuses nothing: {stats}");
        assert_eq!(conflicts, 0, "{stats}");
    } else {
        assert!(
            conflicts > 0,
            "without the lock the condition had to fire: {stats}"
        );
    }
}

async fn staggered_charges_over_two_seconds_sum_exactly_on(backend: Backend) {
    // 100 arrivals every 20 ms; each charge spends 0..=60 ms in the store, so
    // arrivals overlap in-flight charges all along (without the lock they race).
    let server = Arc::new(TestServer::start(ProbeStore::on(backend, 30).await, patient()).await);
    let tasks: Vec<_> = (0..100_u64)
        .map(|i| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                // Arrivals spread over ~2 s: the workload, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(i * 20)).await;
                server.charge(1, i + 1).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(server.balance(1).await, (1..=100).sum::<u64>());
    server.assert_history_replays(1).await;
}

async fn mixed_charge_and_use_conserve_total_and_replay_history_on(backend: Backend) {
    let server =
        Arc::new(TestServer::start(ProbeStore::on(backend, LATENCY_MS).await, patient()).await);
    assert_eq!(server.charge(1, 300).await.status, StatusCode::OK);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                if i % 2 == 0 {
                    (true, server.charge(1, 7).await)
                } else {
                    (false, server.use_points(1, 11).await)
                }
            })
        })
        .collect();
    let (mut charged, mut used) = (0, 0);
    for task in tasks {
        let (is_charge, reply) = task.await.unwrap();
        match reply.status {
            StatusCode::OK => {
                if is_charge {
                    charged += 7;
                } else {
                    used += 11;
                }
            }
            StatusCode::CONFLICT => {
                assert!(!is_charge, "only uses may be refused here");
                assert_eq!(reply.json["code"], "INSUFFICIENT_BALANCE");
            }
            other => panic!("unexpected {other}: {}", reply.json),
        }
    }
    let balance = server.assert_history_replays(1).await;
    assert_eq!(balance, 300 + charged - used, "total conserved");
}

async fn a_failing_request_does_not_fail_those_queued_behind_it_on(backend: Backend) {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::on(backend, LATENCY_MS)
        .await
        .with_gate(gate.clone());
    let server = Arc::new(TestServer::start(store, patient()).await);
    // Hold the lock with a commit at the gate, then queue: a use that must fail,
    // a malformed body, then ten charges.
    let first = server.spawn_charge(1, 5);
    server
        .wait_for_lock("first holds the lock", |l| l.len() == 1)
        .await;
    let mut queued = Vec::new();
    let doomed = server.spawn_use(1, 1_000);
    server
        .wait_for_lock("use queued", |l| l.waiters() == 1)
        .await;
    let malformed = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            server
                .send(http::Method::PATCH, "/point/1/charge", Some("{not json"))
                .await
        })
    };
    server
        .wait_for_lock("bad body queued", |l| l.waiters() == 2)
        .await;
    for i in 0..10 {
        queued.push(server.spawn_charge(1, 10));
        server
            .wait_for_lock("charge queued", |l| l.waiters() == 3 + i)
            .await;
    }
    gate.add_permits(1_000);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    let doomed = doomed.await.unwrap();
    assert_eq!(doomed.status, StatusCode::CONFLICT);
    assert_eq!(doomed.json["code"], "INSUFFICIENT_BALANCE");
    assert_eq!(malformed.await.unwrap().status, StatusCode::BAD_REQUEST);
    for task in queued {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(server.assert_history_replays(1).await, 105);
    assert!(server.lock.is_empty());
}

async fn same_user_requests_apply_in_arrival_order_on(backend: Backend) {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::on(backend, LATENCY_MS)
        .await
        .with_gate(gate.clone());
    let server = Arc::new(TestServer::start(store, patient()).await);
    let mut tasks = Vec::new();
    for i in 0..20_u64 {
        tasks.push(if i % 5 == 4 {
            server.spawn_use(1, 1)
        } else {
            server.spawn_charge(1, i + 1)
        });
        // Request i has reached the server and taken its place before i+1 is sent.
        let waiting = usize::try_from(i).unwrap();
        server
            .wait_for_lock("request queued", |l| l.len() == 1 && l.waiters() == waiting)
            .await;
    }
    gate.add_permits(1_000);
    for task in tasks {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    let order: Vec<(String, u64)> = server
        .history(1)
        .await
        .iter()
        .map(|h| {
            (
                h["type"].as_str().unwrap().to_owned(),
                h["amount"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = (0..20_u64)
        .map(|i| {
            if i % 5 == 4 {
                ("USE".to_owned(), 1)
            } else {
                ("CHARGE".to_owned(), i + 1)
            }
        })
        .collect();
    assert_eq!(order, expected, "history is in arrival order");
}

async fn users_meeting_at_a_barrier(backend: Backend, serialize_all: bool) -> Vec<StatusCode> {
    const USERS: usize = 8;
    // Every commit waits until all USERS commits are in the store at once. Were
    // users serialized by anything, the barrier could never fill and the commits
    // would fail once the patience runs out.
    let barrier = Arc::new(Barrier::new(USERS));
    let patience = if serialize_all { 300 } else { 10_000 };
    let mut store = ProbeStore::on(backend, 0)
        .await
        .with_barrier(barrier, Duration::from_millis(patience));
    if serialize_all {
        store = store.serialize_all();
    }
    let server = Arc::new(TestServer::start(store, patient()).await);
    let tasks: Vec<_> = (1..=USERS as u64)
        .map(|user| server.spawn_charge(user, 100))
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap().status);
    }
    if !serialize_all {
        assert_eq!(server.store.in_flight_max(), USERS);
    }
    statuses
}

async fn different_users_run_concurrently_on(backend: Backend) {
    let statuses = users_meeting_at_a_barrier(backend, false).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

async fn negative_control_global_serialisation_fails_the_barrier_on(backend: Backend) {
    // The same scenario with one global lock around every commit: the barrier
    // test must notice (commits fail), or it could not detect serialisation.
    let statuses = users_meeting_at_a_barrier(backend, true).await;
    assert!(
        statuses.contains(&StatusCode::INTERNAL_SERVER_ERROR),
        "a globally serialised store must fail the barrier: {statuses:?}"
    );
}

async fn client_disconnect_mid_request_leaves_consistent_state_on(backend: Backend) {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::on(backend, LATENCY_MS)
        .await
        .with_gate(gate.clone());
    let mut entered = store.entered();
    let server = Arc::new(TestServer::start(store, patient()).await);

    // A raw client sends a charge and hangs up while the commit is in flight.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let body = r#"{"amount":70}"#;
    let request = format!(
        "PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(entered.recv().await.unwrap().get(), 1, "commit started");
    // A second request queues behind it.
    let second = server.spawn_charge(1, 30);
    server
        .wait_for_lock("second queued", |l| l.waiters() == 1)
        .await;
    drop(raw);
    // The disconnected change still owns the lock: the second has not started.
    assert_eq!(server.lock.waiters(), 1);
    gate.add_permits(1_000);
    let second = second.await.unwrap();
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        second.json["point"], 100,
        "the second ran after the whole first change"
    );
    assert_eq!(server.assert_history_replays(1).await, 100);
    assert_eq!(server.history(1).await.len(), 2);
    server
        .wait_for_lock("lock table empty", |l| l.is_empty())
        .await;
}

async fn lock_timeout_answers_503_and_changes_nothing_on(backend: Backend) {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::on(backend, 0).await.with_gate(gate.clone());
    let options = AppOptions {
        lock_timeout: Duration::from_millis(200),
        ..AppOptions::default()
    };
    let server = Arc::new(TestServer::start(store, options).await);
    let first = server.spawn_charge(1, 10);
    server.wait_for_lock("first holds", |l| l.len() == 1).await;
    let timed_out = server.charge(1, 20).await;
    assert_eq!(timed_out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(timed_out.json["code"], "LOCK_TIMEOUT");
    assert_eq!(timed_out.headers["retry-after"], "1");
    assert_eq!(server.lock.metrics().timeouts, 1);
    gate.add_permits(1_000);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        server.assert_history_replays(1).await,
        10,
        "the 503 changed nothing"
    );
    assert_eq!(server.history(1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_at_once_and_changes_nothing() {
    // --lock-queue-max 2: a holder and two waiters; the fourth request for the
    // user is refused at once, the others are served in order.
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::on(Backend::Memory, 0)
        .await
        .with_gate(gate.clone());
    let options = AppOptions {
        lock_queue_max: Some(2),
        ..patient()
    };
    let server = Arc::new(TestServer::start(store, options).await);
    let holder = server.spawn_charge(1, 1);
    server
        .wait_for_lock("the first holds", |l| l.len() == 1)
        .await;
    let waiters: Vec<_> = (0..2).map(|_| server.spawn_charge(1, 10)).collect();
    server.wait_for_lock("two wait", |l| l.waiters() == 2).await;
    let refused = server.charge(1, 100).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.json
    );
    assert_eq!(refused.json["code"], "LOCK_QUEUE_FULL");
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(server.lock.metrics().queue_full, 1);
    assert_eq!(
        server.lock.waiters(),
        2,
        "the refused request queued nothing"
    );
    // Another user is not affected by user 1's full queue.
    let other = server.spawn_charge(2, 5);
    gate.add_permits(1_000);
    assert_eq!(holder.await.unwrap().status, StatusCode::OK);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(other.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        server.assert_history_replays(1).await,
        21,
        "the 503 changed nothing"
    );
    let stats = server.get("/stats").await.json;
    assert_eq!(stats["lock"]["queueFull"], 1, "{stats}");
}

/// A panic in a handler answers 500 JSON and releases the user's lock: the request
/// queued behind it runs (it would get 503 LOCK_TIMEOUT if the panicked request
/// kept the lock), and the panicked change left nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_answers_500_and_releases_the_lock() {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::new(0).with_gate(gate.clone()).with_panic_on(13);
    let options = AppOptions {
        lock_timeout: Duration::from_secs(5),
        ..patient()
    };
    let server = Arc::new(TestServer::start(store, options).await);
    let panicking = server.spawn_charge(1, 13);
    server
        .wait_for_lock("panicking holds", |l| l.len() == 1)
        .await;
    let queued = server.spawn_charge(1, 5);
    server
        .wait_for_lock("charge queued", |l| l.waiters() == 1)
        .await;
    gate.add_permits(1_000);
    let panicked = panicking.await.unwrap();
    assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(panicked.json["code"], "INTERNAL");
    assert!(panicked.headers.contains_key("x-request-id"));
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, StatusCode::OK, "{}", queued.json);
    assert_eq!(queued.json["point"], 5);
    assert_eq!(server.assert_history_replays(1).await, 5);
    server
        .wait_for_lock("lock table empty", |l| l.is_empty())
        .await;
}

/// The whole-request timeout answers 408 `REQUEST_TIMEOUT` (JSON) while the
/// handler is still in the store; the started change then finishes in the
/// background and only then releases the user's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_answers_408_json_and_the_started_change_finishes() {
    let gate = Arc::new(Semaphore::new(0));
    let store = ProbeStore::new(0).with_gate(gate.clone());
    let options = AppOptions {
        request_timeout: Duration::from_millis(300),
        ..patient()
    };
    let server = Arc::new(TestServer::start(store, options).await);
    let timed_out = server.charge(1, 7).await;
    assert_eq!(timed_out.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(timed_out.json["code"], "REQUEST_TIMEOUT");
    assert_eq!(timed_out.headers["content-type"], "application/json");
    assert!(timed_out.headers.contains_key("x-request-id"));
    assert_eq!(
        server.lock.len(),
        1,
        "the started change still holds user 1"
    );
    gate.add_permits(1_000);
    server
        .wait_for_lock("lock table empty", |l| l.is_empty())
        .await;
    assert_eq!(server.assert_history_replays(1).await, 7);
}

async fn a_slow_uploader_holds_its_user_only_until_the_body_deadline_on(backend: Backend) {
    let options = AppOptions {
        body_timeout: Duration::from_millis(300),
        ..patient()
    };
    let server = Arc::new(TestServer::start(ProbeStore::on(backend, 0).await, options).await);
    // Headers promise 13 body bytes; only 5 ever come.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(
        b"PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 13\r\n\r\n{\"amo",
    )
    .await
    .unwrap();
    server
        .wait_for_lock("uploader holds user 1", |l| l.len() == 1)
        .await;
    let queued = server.spawn_charge(1, 10);
    server
        .wait_for_lock("charge queued", |l| l.waiters() == 1)
        .await;
    // Other users never notice.
    assert_eq!(server.charge(2, 5).await.status, StatusCode::OK);

    // The server answers without reading the rest; it may keep the socket open.
    let response = support::http::read_until(&mut raw, "}").await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains(r#""code":"BODY_TIMEOUT""#), "{response}");
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, StatusCode::OK, "{}", queued.json);
    assert_eq!(queued.json["point"], 10);
    assert_eq!(
        server.history(1).await.len(),
        1,
        "the stalled upload changed nothing"
    );
}

/// One user's hundred charges on a pipelined store: exact, and pipelined (the
/// user was released before a change was durable, so several of its changes
/// were in the store at once: the wrapper's in-flight gauge, counted from
/// sequencing to the durable answer, passed 1).
async fn one_users_changes_are_in_flight_together_on(backend: Backend) {
    let server = Arc::new(TestServer::start(ProbeStore::on(backend, 0).await, patient()).await);
    let (balance, running) = hundred_concurrent_charges(&server).await;
    assert_eq!(balance, 1_000);
    assert_eq!(running.len(), 100);
    server.assert_history_replays(1).await;
    assert!(
        server.store.in_flight_max() > 1,
        "never more than one change of the user in flight: not pipelined"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_users_changes_are_in_flight_together() {
    one_users_changes_are_in_flight_together_on(Backend::Sqlite).await;
}

// PostgreSQL with pipelined commits (`--pg-pipeline on`): the scenarios whose
// guarantees pipelining could break (exact sums, FIFO, conservation, a failure
// not spreading, the condition without the lock, disconnects).
on_pg_pipelined! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    pg_pipelined_hundred_concurrent_charges_sum_exactly_with_distinct_running_balances => hundred_concurrent_charges_sum_exactly_with_distinct_running_balances_on;
    pg_pipelined_negative_control_without_lock_loses_updates => negative_control_without_lock_loses_updates_on;
    pg_pipelined_without_the_lock_the_condition_still_loses_no_update => without_the_lock_the_condition_still_loses_no_update_on;
    pg_pipelined_mixed_charge_and_use_conserve_total_and_replay_history => mixed_charge_and_use_conserve_total_and_replay_history_on;
    pg_pipelined_a_failing_request_does_not_fail_those_queued_behind_it => a_failing_request_does_not_fail_those_queued_behind_it_on;
    pg_pipelined_same_user_requests_apply_in_arrival_order => same_user_requests_apply_in_arrival_order_on;
    pg_pipelined_client_disconnect_mid_request_leaves_consistent_state => client_disconnect_mid_request_leaves_consistent_state_on;
    pg_pipelined_one_users_changes_are_in_flight_together => one_users_changes_are_in_flight_together_on;
}

on_every_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    hundred_concurrent_charges_sum_exactly_with_distinct_running_balances / sqlite_hundred_concurrent_charges_sum_exactly_with_distinct_running_balances / pg_hundred_concurrent_charges_sum_exactly_with_distinct_running_balances => hundred_concurrent_charges_sum_exactly_with_distinct_running_balances_on;
    negative_control_without_lock_loses_updates / sqlite_negative_control_without_lock_loses_updates / pg_negative_control_without_lock_loses_updates => negative_control_without_lock_loses_updates_on;
    without_the_lock_the_condition_still_loses_no_update / sqlite_without_the_lock_the_condition_still_loses_no_update / pg_without_the_lock_the_condition_still_loses_no_update => without_the_lock_the_condition_still_loses_no_update_on;
    staggered_charges_over_two_seconds_sum_exactly / sqlite_staggered_charges_over_two_seconds_sum_exactly / pg_staggered_charges_over_two_seconds_sum_exactly => staggered_charges_over_two_seconds_sum_exactly_on;
    mixed_charge_and_use_conserve_total_and_replay_history / sqlite_mixed_charge_and_use_conserve_total_and_replay_history / pg_mixed_charge_and_use_conserve_total_and_replay_history => mixed_charge_and_use_conserve_total_and_replay_history_on;
    a_failing_request_does_not_fail_those_queued_behind_it / sqlite_a_failing_request_does_not_fail_those_queued_behind_it / pg_a_failing_request_does_not_fail_those_queued_behind_it => a_failing_request_does_not_fail_those_queued_behind_it_on;
    same_user_requests_apply_in_arrival_order / sqlite_same_user_requests_apply_in_arrival_order / pg_same_user_requests_apply_in_arrival_order => same_user_requests_apply_in_arrival_order_on;
    different_users_run_concurrently / sqlite_different_users_run_concurrently / pg_different_users_run_concurrently => different_users_run_concurrently_on;
    negative_control_global_serialisation_fails_the_barrier / sqlite_negative_control_global_serialisation_fails_the_barrier / pg_negative_control_global_serialisation_fails_the_barrier => negative_control_global_serialisation_fails_the_barrier_on;
    client_disconnect_mid_request_leaves_consistent_state / sqlite_client_disconnect_mid_request_leaves_consistent_state / pg_client_disconnect_mid_request_leaves_consistent_state => client_disconnect_mid_request_leaves_consistent_state_on;
    lock_timeout_answers_503_and_changes_nothing / sqlite_lock_timeout_answers_503_and_changes_nothing / pg_lock_timeout_answers_503_and_changes_nothing => lock_timeout_answers_503_and_changes_nothing_on;
    a_slow_uploader_holds_its_user_only_until_the_body_deadline / sqlite_a_slow_uploader_holds_its_user_only_until_the_body_deadline / pg_a_slow_uploader_holds_its_user_only_until_the_body_deadline => a_slow_uploader_holds_its_user_only_until_the_body_deadline_on;
}

/// A balance past 2^63 - 1 cannot be stored in SQLite or PostgreSQL (the memory
/// store holds any u64): the commit fails inside the store.
async fn a_failed_commit_answers_500_changes_nothing_and_releases_the_lock_on(backend: Backend) {
    let server = Arc::new(
        TestServer::start_with_policy(
            ProbeStore::on(backend, 0).await,
            patient(),
            KeyedLock::new(),
            Policy::new(u64::MAX),
        )
        .await,
    );
    assert_eq!(
        server.charge(1, i64::MAX as u64).await.status,
        StatusCode::OK
    );
    let failed = server.charge(1, i64::MAX as u64).await;
    assert_eq!(
        failed.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        failed.json
    );
    assert_eq!(failed.json["code"], "STORE_ERROR");
    assert!(server.lock.is_empty(), "the lock was released");
    // The user is not stuck, and the failure changed nothing.
    assert_eq!(server.use_points(1, 1).await.status, StatusCode::OK);
    assert_eq!(
        server.balance(1).await.to_string(),
        (i64::MAX - 1).to_string()
    );
    assert_eq!(server.history(1).await.len(), 2);
    assert_eq!(
        server.assert_history_replays(1).await.to_string(),
        (i64::MAX - 1).to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_commit_answers_500_changes_nothing_and_releases_the_lock() {
    a_failed_commit_answers_500_changes_nothing_and_releases_the_lock_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_failed_commit_answers_500_changes_nothing_and_releases_the_lock() {
    if support::postgres_skipped() {
        return;
    }
    a_failed_commit_answers_500_changes_nothing_and_releases_the_lock_on(Backend::Postgres).await;
}
