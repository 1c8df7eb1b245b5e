//! Idempotency-Key over real HTTP, on every store: a retried charge applies
//! once and gets the first answer byte for byte; a key reused for another
//! request is a 422; a malformed key a 400; concurrent duplicates apply once,
//! with the lock and, without it, through the store's key condition (and the
//! negative control: both off, duplicates apply more than once).
//!
//! Survival across a restart and `kill -9`, and expiry, are in
//! `tests/idempotency_restart.rs` (they need the binary).

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use pointlock::core::KeyedLock;
use pointlock::server::AppOptions;
use support::{patient, Backend, ProbeStore, TestServer};

/// Each call of every store waits 0..=3 ms: the template's race window.
const LATENCY_MS: u64 = 3;

async fn keyed(
    server: &TestServer,
    op: &str,
    user: u64,
    key: &[u8],
    body: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    server
        .send_raw(
            Method::PATCH,
            &format!("/point/{user}/{op}"),
            &[("idempotency-key", key)],
            body,
        )
        .await
}

/// The same keyed charge of 10 to user 1, sent 40 times at once.
fn forty_duplicates(
    server: &Arc<TestServer>,
) -> Vec<tokio::task::JoinHandle<(StatusCode, HeaderMap, Bytes)>> {
    (0..40)
        .map(|_| {
            let server = Arc::clone(server);
            tokio::spawn(async move { keyed(&server, "charge", 1, b"double-click", "10").await })
        })
        .collect()
}

fn replayed(headers: &HeaderMap) -> bool {
    match headers.get("idempotent-replayed") {
        None => false,
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
    }
}

fn code(body: &Bytes) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["code"].as_str().unwrap().to_owned()
}

async fn a_retry_gets_the_first_answer_byte_for_byte_and_applies_nothing_on(backend: Backend) {
    let server = TestServer::start(ProbeStore::on(backend, 0).await, patient()).await;
    let (status, headers, first) = keyed(&server, "charge", 1, b"order-1", "100").await;
    assert_eq!(status, StatusCode::OK, "{first:?}");
    assert!(!replayed(&headers));
    // The same request, both body forms: the same amount is the same request.
    for body in ["100", r#"{"amount":100}"#] {
        let (status, headers, again) = keyed(&server, "charge", 1, b"order-1", body).await;
        assert_eq!(status, StatusCode::OK);
        assert!(replayed(&headers), "{headers:?}");
        assert_eq!(again, first, "byte for byte");
    }
    // A use with its own key, then its retry.
    let (_, _, used) = keyed(&server, "use", 1, b"order-2", "30").await;
    let (_, headers, used_again) = keyed(&server, "use", 1, b"order-2", "30").await;
    assert!(replayed(&headers));
    assert_eq!(used_again, used);
    // Keys are per user: user 2's "order-1" is a new request.
    let (status, headers, _) = keyed(&server, "charge", 2, b"order-1", "100").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!replayed(&headers));
    assert_eq!(server.balance(1).await, 70);
    assert_eq!(server.history(1).await.len(), 2);
    assert_eq!(server.balance(2).await, 100);
}

async fn a_key_reused_for_another_request_is_422_and_changes_nothing_on(backend: Backend) {
    let server = TestServer::start(ProbeStore::on(backend, 0).await, patient()).await;
    keyed(&server, "charge", 1, b"k", "100").await;
    for (op, body) in [
        ("use", "100"),
        ("charge", "99"),
        ("charge", r#"{"amount":101}"#),
    ] {
        let (status, headers, body) = keyed(&server, op, 1, b"k", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
        assert_eq!(code(&body), "IDEMPOTENCY_KEY_REUSED");
        assert!(!replayed(&headers));
    }
    assert_eq!(server.balance(1).await, 100);
    assert_eq!(server.history(1).await.len(), 1);
}

async fn a_malformed_key_is_400_and_changes_nothing_on(backend: Backend) {
    let server = TestServer::start(ProbeStore::on(backend, 0).await, patient()).await;
    let long = vec![b'k'; 256];
    let malformed: [&[u8]; 5] = [b"", b"has space", b"tab\tinside", &long, b"caf\xc3\xa9"];
    for key in malformed {
        let (status, _, body) = keyed(&server, "charge", 1, key, "100").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key:?}: {body:?}");
        assert_eq!(code(&body), "INVALID_IDEMPOTENCY_KEY");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("has space"), "the key is not echoed: {text}");
    }
    // Two keys on one request.
    let (status, _, body) = server
        .send_raw(
            Method::PATCH,
            "/point/1/charge",
            &[("idempotency-key", b"a"), ("idempotency-key", b"b")],
            "100",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "INVALID_IDEMPOTENCY_KEY");
    // The longest valid key works.
    let (status, _, _) = keyed(&server, "charge", 1, &vec![b'~'; 255], "1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.history(1).await.len(), 1);
}

async fn refusals_before_and_in_the_service_store_nothing_on(backend: Backend) {
    let server = TestServer::start(ProbeStore::on(backend, 0).await, patient()).await;
    // An invalid amount and invalid JSON: refused before the service.
    for body in ["0", "{", r#"{"amount":-1}"#] {
        let (status, _, _) = keyed(&server, "charge", 1, b"k", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    // A policy refusal (409) is not recorded either: its retry is decided afresh.
    let (status, _, body) = keyed(&server, "use", 1, b"k", "50").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "INSUFFICIENT_BALANCE");
    server.charge(1, 80).await;
    let (status, headers, body) = keyed(&server, "use", 1, b"k", "50").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(!replayed(&headers));
    let (_, headers, again) = keyed(&server, "use", 1, b"k", "50").await;
    assert!(replayed(&headers));
    assert_eq!(again, body);
    assert_eq!(server.balance(1).await, 30);
}

async fn concurrent_duplicates_apply_once_and_the_rest_replay_on(backend: Backend) {
    let server =
        Arc::new(TestServer::start(ProbeStore::on(backend, LATENCY_MS).await, patient()).await);
    let tasks = forty_duplicates(&server);
    let mut first = None;
    let mut replays = 0;
    for task in tasks {
        let (status, headers, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
        replays += usize::from(replayed(&headers));
        assert_eq!(
            first.get_or_insert_with(|| body.clone()),
            &body,
            "one answer for all"
        );
    }
    assert_eq!(replays, 39, "the first applies, the rest replay");
    assert_eq!(server.balance(1).await, 10);
    assert_eq!(server.history(1).await.len(), 1);
    let stats = server.get("/stats").await.json;
    assert_eq!(
        stats["service"]["commitConflicts"], 0,
        "the lock serialised them: {stats}"
    );
    assert!(server.lock.is_empty());
}

async fn without_the_lock_the_key_condition_still_applies_once_on(backend: Backend) {
    // The lock off (no layer, a lock that excludes nothing), the store's
    // conditions on: racing duplicates are refused as conflicts and their
    // retries replay, or they get a retryable 503; one charge applies.
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
    let tasks = forty_duplicates(&server);
    let mut applied = 0;
    for task in tasks {
        let (status, headers, body) = task.await.unwrap();
        match status {
            StatusCode::OK => applied += usize::from(!replayed(&headers)),
            // WRITE_CONFLICT: refused by a condition. STORE_UNAVAILABLE (the
            // pipelined SQLite store): a replay computed from sequenced state
            // while a racing change failed is not given (it may have shown a
            // lost state); both changed nothing and are retryable.
            StatusCode::SERVICE_UNAVAILABLE => assert!(
                ["WRITE_CONFLICT", "STORE_UNAVAILABLE"].contains(&code(&body).as_str()),
                "{body:?}"
            ),
            other => panic!("unexpected {other}: {body:?}"),
        }
    }
    assert_eq!(applied, 1, "exactly one answer applied");
    assert_eq!(server.balance(1).await, 10);
    assert_eq!(server.history(1).await.len(), 1);
}

async fn negative_control_without_lock_and_conditions_duplicates_apply_more_than_once(
    backend: Backend,
) {
    // Both lines of defence off: no layer, a lock that excludes nothing, and the
    // store's conditions (balance and key) switched off. The duplicates race
    // past each other's records and apply more than once.
    let options = AppOptions {
        lock_layer: false,
        ..patient()
    };
    let server = Arc::new(
        TestServer::start_unconditional(
            ProbeStore::on(backend, LATENCY_MS).await,
            options,
            KeyedLock::unsynchronized(),
        )
        .await,
    );
    let tasks = forty_duplicates(&server);
    for task in tasks {
        assert_eq!(task.await.unwrap().0, StatusCode::OK);
    }
    let applied = server.history(1).await.len();
    assert!(
        applied > 1,
        "without the lock and the conditions duplicates must apply more than once, got {applied}"
    );
}

on_every_store! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    a_retry_gets_the_first_answer_byte_for_byte_and_applies_nothing
        / sqlite_a_retry_gets_the_first_answer_byte_for_byte_and_applies_nothing
        / pg_a_retry_gets_the_first_answer_byte_for_byte_and_applies_nothing
        => a_retry_gets_the_first_answer_byte_for_byte_and_applies_nothing_on;
    a_key_reused_for_another_request_is_422_and_changes_nothing
        / sqlite_a_key_reused_for_another_request_is_422_and_changes_nothing
        / pg_a_key_reused_for_another_request_is_422_and_changes_nothing
        => a_key_reused_for_another_request_is_422_and_changes_nothing_on;
    a_malformed_key_is_400_and_changes_nothing
        / sqlite_a_malformed_key_is_400_and_changes_nothing
        / pg_a_malformed_key_is_400_and_changes_nothing
        => a_malformed_key_is_400_and_changes_nothing_on;
    refusals_before_and_in_the_service_store_nothing
        / sqlite_refusals_before_and_in_the_service_store_nothing
        / pg_refusals_before_and_in_the_service_store_nothing
        => refusals_before_and_in_the_service_store_nothing_on;
    concurrent_duplicates_apply_once_and_the_rest_replay
        / sqlite_concurrent_duplicates_apply_once_and_the_rest_replay
        / pg_concurrent_duplicates_apply_once_and_the_rest_replay
        => concurrent_duplicates_apply_once_and_the_rest_replay_on;
    without_the_lock_the_key_condition_still_applies_once
        / sqlite_without_the_lock_the_key_condition_still_applies_once
        / pg_without_the_lock_the_key_condition_still_applies_once
        => without_the_lock_the_key_condition_still_applies_once_on;
}

// The negative control on the stores whose key condition the test-util switch
// turns off. On PostgreSQL the record's primary key refuses a second record
// for the key even then (the statement fails and the retry replays), so
// duplicates cannot apply twice there even with every switch off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn negative_control_without_lock_and_conditions_duplicates_apply_twice() {
    negative_control_without_lock_and_conditions_duplicates_apply_more_than_once(Backend::Memory)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_negative_control_without_lock_and_conditions_duplicates_apply_twice() {
    negative_control_without_lock_and_conditions_duplicates_apply_more_than_once(Backend::Sqlite)
        .await;
}

// The store's key condition, on each store directly (no service, no lock): the
// second line of defence the tests above reach only by chance of timing.

use pointlock::core::{Change, IdempotencyKey, PointStore, TransactionType, UserId};

fn user() -> UserId {
    UserId::new(1).unwrap()
}

/// A charge from `read` to `point` at `time`, made with key "k" whose records
/// made at or before `expired_before` are expired; under a guard that excludes
/// nothing (as if the lock had been bypassed).
async fn keyed_change(read: u64, point: u64, time: i64, expired_before: Option<i64>) -> Change {
    let lock = KeyedLock::unsynchronized();
    let held = Arc::new(lock.lock(user()).await);
    let amount = pointlock::core::Amount::new(point - read).unwrap();
    let change = Change::for_tests(
        held,
        Some(read),
        point,
        TransactionType::Charge,
        amount,
        time,
    );
    match expired_before {
        Some(before) => change.with_key_for_tests(IdempotencyKey::new("k").unwrap(), before),
        None => change,
    }
}

async fn the_store_refuses_a_second_live_record_and_replaces_an_expired_one_on(backend: Backend) {
    let store = ProbeStore::on(backend, 0).await;
    let key = IdempotencyKey::new("k").unwrap();
    store
        .commit(keyed_change(0, 100, 1_000, Some(0)).await)
        .await
        .unwrap();
    let record = store
        .idempotency_record(user(), &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.point, record.time_millis, record.amount.get()),
        (100, 1_000, 100)
    );
    // Computed from the current balance, so only the key condition can refuse it.
    let refused = store
        .commit(keyed_change(100, 150, 2_000, Some(999)).await)
        .await;
    assert!(refused.unwrap_err().is_conflict());
    assert_eq!(store.user_point(user()).await.unwrap().unwrap().point, 100);
    assert_eq!(store.histories(user()).await.unwrap().len(), 1);
    // A change whose balance condition fails writes no record either.
    let stale = store
        .commit(keyed_change(0, 50, 2_500, Some(1_000)).await)
        .await;
    assert!(stale.unwrap_err().is_conflict());
    assert_eq!(
        store
            .idempotency_record(user(), &key)
            .await
            .unwrap()
            .unwrap()
            .time_millis,
        1_000
    );
    // Expired (made at or before 1_000): replaced by the new change's record.
    store
        .commit(keyed_change(100, 150, 3_000, Some(1_000)).await)
        .await
        .unwrap();
    let record = store
        .idempotency_record(user(), &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.point, record.time_millis, record.amount.get()),
        (150, 3_000, 50)
    );
    assert_eq!(store.histories(user()).await.unwrap().len(), 2);
}

async fn the_sweep_removes_only_expired_records_in_bounded_steps_on(backend: Backend) {
    let store = ProbeStore::on(backend, 0).await;
    for (user, time) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
        let lock = KeyedLock::unsynchronized();
        let held = Arc::new(lock.lock(UserId::new(user).unwrap()).await);
        let one = pointlock::core::Amount::new(1).unwrap();
        let change = Change::for_tests(held, Some(0), 1, TransactionType::Charge, one, time)
            .with_key_for_tests(IdempotencyKey::new("k").unwrap(), 0);
        store.commit(change).await.unwrap();
    }
    assert_eq!(store.sweep_idempotency(9, 10).await.unwrap(), 0);
    assert_eq!(store.sweep_idempotency(30, 2).await.unwrap(), 2);
    assert_eq!(store.sweep_idempotency(30, 2).await.unwrap(), 1);
    assert_eq!(store.sweep_idempotency(30, 2).await.unwrap(), 0);
    let key = IdempotencyKey::new("k").unwrap();
    for (user, kept) in [(1, false), (3, false), (4, true)] {
        let found = store
            .idempotency_record(UserId::new(user).unwrap(), &key)
            .await
            .unwrap();
        assert_eq!(found.is_some(), kept, "user {user}");
    }
    // The changes themselves stay.
    assert_eq!(
        store
            .user_point(UserId::new(1).unwrap())
            .await
            .unwrap()
            .unwrap()
            .point,
        1
    );
}

on_every_store! {
    #[tokio::test]
    the_store_refuses_a_second_live_record_and_replaces_an_expired_one
        / sqlite_the_store_refuses_a_second_live_record_and_replaces_an_expired_one
        / pg_the_store_refuses_a_second_live_record_and_replaces_an_expired_one
        => the_store_refuses_a_second_live_record_and_replaces_an_expired_one_on;
    the_sweep_removes_only_expired_records_in_bounded_steps
        / sqlite_the_sweep_removes_only_expired_records_in_bounded_steps
        / pg_the_sweep_removes_only_expired_records_in_bounded_steps
        => the_sweep_removes_only_expired_records_in_bounded_steps_on;
}
