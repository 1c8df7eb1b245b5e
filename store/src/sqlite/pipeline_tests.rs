//! The pipelined store: a user is released once its change is
//! sequenced, the next change builds on the sequenced state, and nothing a
//! caller is told (a change's answer, a refusal, a replay) comes before the
//! state it shows is durable.
//!
//! A [`Gate`] holds the writer before each batch: while it is closed, nothing
//! sequenced is durable, deterministically (no sleeps). The negative controls
//! show what each test catches: the same scenario with the pipeline's own
//! safeguard switched off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pointlock_core::{
    Amount, Applied, IdempotencyKey, ManualClock, PipelinedStore, PointError, PointService,
    PointStore, Policy, TransactionType, Unsequenced, UserId,
};

// Changes whose guard comes from a lock that excludes nothing: the lock bypassed.
use super::tests::change_from;
use super::{Gate, NegativeControl, SqliteOptions, SqliteStore};

type Service = PointService<Arc<SqliteStore>>;

fn id(raw: u64) -> UserId {
    UserId::new(raw).unwrap()
}

fn amount(raw: u64) -> Amount {
    Amount::new(raw).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    gate: Arc<Gate>,
    fail_commits: Arc<AtomicBool>,
    fail_amount: Arc<AtomicU64>,
    store: Arc<SqliteStore>,
    svc: Arc<Service>,
}

fn fixture(control: Option<NegativeControl>) -> Fixture {
    fixture_with(true, control)
}

fn fixture_with(pipeline: bool, control: Option<NegativeControl>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let fail_commits = Arc::new(AtomicBool::new(false));
    let fail_amount = Arc::new(AtomicU64::new(0));
    let options = SqliteOptions {
        gate: Some(Arc::clone(&gate)),
        fail_commits: Some(Arc::clone(&fail_commits)),
        fail_amount: Some(Arc::clone(&fail_amount)),
        negative_control: control,
        pipeline,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(dir.path().join("p.db"), options).unwrap());
    let svc = Arc::new(PointService::new(
        Arc::clone(&store),
        Policy::default(),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    ));
    Fixture {
        _dir: dir,
        gate,
        fail_commits,
        fail_amount,
        store,
        svc,
    }
}

/// Take user 1's lock (in FIFO order), then apply the change with the guard
/// handed over, in a task of its own.
async fn spawn_apply(
    svc: &Arc<Service>,
    kind: TransactionType,
    raw: u64,
    key: Option<&str>,
) -> tokio::task::JoinHandle<Result<Applied, PointError>> {
    let held = Arc::new(svc.lock().lock(id(1)).await);
    let svc = Arc::clone(svc);
    let key = key.map(|k| IdempotencyKey::new(k).unwrap());
    tokio::spawn(async move { svc.apply(held, kind, amount(raw), key.as_ref()).await })
}

/// Wait (yielding, bounded) until `done` holds: a signal, not a time.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..1_000_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the awaited condition never held");
}

/// User 1's lock is free again: the change before was sequenced.
async fn released(svc: &Service) {
    drop(svc.lock().lock(id(1)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_released_at_sequencing_and_the_next_change_builds_on_the_sequenced_state() {
    let f = fixture(None);
    f.gate.close();
    let first = spawn_apply(&f.svc, TransactionType::Charge, 100, None).await;
    // The lock passes on while the writer is held at the gate: sequenced, not
    // durable.
    released(&f.svc).await;
    assert!(!first.is_finished(), "answered before it was durable");
    assert_eq!(f.store.sequenced_users(), 1);
    // Reads show durable state only.
    assert_eq!(f.svc.point(id(1)).await.unwrap().point, 0);
    assert!(f.svc.histories(id(1)).await.unwrap().is_empty());
    // The next change computes on the sequenced 100.
    let second = spawn_apply(&f.svc, TransactionType::Charge, 10, None).await;
    released(&f.svc).await;
    let read = f.store.sequenced_point(id(1)).await.unwrap();
    assert_eq!(read.value.map(|p| p.point), Some(110));
    assert!(read.is_marked(), "marked: not durable yet");
    assert!(!second.is_finished());

    f.gate.open();
    assert_eq!(first.await.unwrap().unwrap().point.point, 100);
    assert_eq!(second.await.unwrap().unwrap().point.point, 110);
    assert_eq!(
        f.store.sequenced_users(),
        0,
        "the entry leaves once durable"
    );
    let history: Vec<u64> = f
        .svc
        .histories(id(1))
        .await
        .unwrap()
        .iter()
        .map(|h| h.amount.get())
        .collect();
    assert_eq!(history, [100, 10], "in sequence order");
    assert_eq!(f.svc.point(id(1)).await.unwrap().point, 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_pipelined_the_user_stays_locked_until_the_change_is_durable() {
    let f = fixture_with(false, None);
    f.gate.close();
    let first = spawn_apply(&f.svc, TransactionType::Charge, 100, None).await;
    until(|| f.gate.waited.load(Ordering::SeqCst) == 1).await;
    assert!(f.svc.lock().try_lock(id(1)).is_none(), "held until durable");
    f.gate.open();
    assert_eq!(first.await.unwrap().unwrap().point.point, 100);
    assert!(f.svc.lock().try_lock(id(1)).is_some());
}

/// Balance 100 durable; a use of 80 sequenced (20) and held at the gate; a use
/// of 50 is then refused on the sequenced 20 (it would pass on the durable
/// 100). Returns the two tasks, the second waiting at its barrier (or, under
/// the negative control, not).
async fn refusal_on_sequenced_state(
    f: &Fixture,
) -> (
    tokio::task::JoinHandle<Result<Applied, PointError>>,
    tokio::task::JoinHandle<Result<Applied, PointError>>,
) {
    spawn_apply(&f.svc, TransactionType::Charge, 100, None)
        .await
        .await
        .unwrap()
        .unwrap();
    f.gate.close();
    let spend = spawn_apply(&f.svc, TransactionType::Use, 80, None).await;
    released(&f.svc).await;
    let refused = spawn_apply(&f.svc, TransactionType::Use, 50, None).await;
    (spend, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_computed_on_sequenced_state_waits_until_that_state_is_durable() {
    let f = fixture(None);
    let (spend, refused) = refusal_on_sequenced_state(&f).await;
    until(|| f.store.stats().barriers == 1).await;
    assert!(!refused.is_finished(), "refused before the 20 was durable");
    f.gate.open();
    assert_eq!(spend.await.unwrap().unwrap().point.point, 20);
    assert!(matches!(
        refused.await.unwrap(),
        Err(PointError::InsufficientBalance { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_state_a_refusal_saw_fails_the_refusal_becomes_a_coded_5xx() {
    let f = fixture(None);
    let (spend, refused) = refusal_on_sequenced_state(&f).await;
    until(|| f.store.stats().barriers == 1).await;
    f.fail_commits.store(true, Ordering::SeqCst);
    f.gate.open();
    let spent = spend.await.unwrap().unwrap_err();
    assert_eq!(spent.code(), "STORE_OUTCOME_UNKNOWN", "{spent}");
    // Not INSUFFICIENT_BALANCE: the 20 it was computed on is not durable.
    let refused = refused.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), "STORE_UNAVAILABLE", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_settling_at_once_gives_the_refusal_before_its_state_is_durable() {
    let f = fixture(Some(NegativeControl::DirtyReads));
    let (spend, refused) = refusal_on_sequenced_state(&f).await;
    // Answered while the writer is still held at the gate...
    let answer = refused.await.unwrap();
    assert!(matches!(
        answer,
        Err(PointError::InsufficientBalance { .. })
    ));
    // ...on a state that then never becomes durable: the dirty read the two
    // tests above exclude.
    f.fail_commits.store(true, Ordering::SeqCst);
    f.gate.open();
    assert!(spend.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_every_later_sequenced_change_of_the_user_and_acknowledges_none() {
    let f = fixture(None);
    f.gate.close();
    f.fail_commits.store(true, Ordering::SeqCst);
    let mut burst = Vec::new();
    for raw in 1..=5 {
        burst.push(spawn_apply(&f.svc, TransactionType::Charge, raw, None).await);
    }
    released(&f.svc).await;
    f.gate.open();
    let mut codes = Vec::new();
    for task in burst {
        let error = task
            .await
            .unwrap()
            .expect_err("no 2xx after a failed batch");
        codes.push(error.code());
    }
    assert_eq!(codes[0], "STORE_OUTCOME_UNKNOWN", "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| ["STORE_OUTCOME_UNKNOWN", "STORE_UNAVAILABLE"].contains(c)),
        "{codes:?}"
    );
    assert!(f.store.is_stopped());
    assert_eq!(f.store.sequenced_users(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_change_fails_the_changes_sequenced_on_it_and_the_user_recovers() {
    let f = fixture(None);
    f.gate.close();
    f.fail_amount.store(100, Ordering::SeqCst);
    let failing = spawn_apply(&f.svc, TransactionType::Charge, 100, None).await;
    let built_on_it = spawn_apply(&f.svc, TransactionType::Charge, 10, None).await;
    released(&f.svc).await;
    f.gate.open();
    let first = failing.await.unwrap().unwrap_err();
    assert_eq!(first.code(), "STORE_ERROR", "{first}");
    // Computed on the 100 that never applied: refused, never acknowledged.
    let second = built_on_it.await.unwrap().unwrap_err();
    assert_eq!(second.code(), "WRITE_CONFLICT", "{second}");
    assert!(!f.store.is_stopped(), "a failed statement is not fail-stop");
    f.fail_amount.store(0, Ordering::SeqCst);
    // The next change computes on the durable state again.
    let next = spawn_apply(&f.svc, TransactionType::Charge, 7, None).await;
    assert_eq!(next.await.unwrap().unwrap().point.point, 7);
    let history = f.svc.histories(id(1)).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(f.svc.point(id(1)).await.unwrap().point, 7);
}

/// Balance 100 durable; then, sequenced while the writer is held: a charge of
/// 10 (110) that fails in the writer, a use of 4 computed on its 110 and a use
/// of 6 computed on that (100 again: two uses, because the planted fault fails
/// every change of 10), and a charge of 20 computed on that 100. The uses and
/// the last charge were computed on the failed charge: none may apply,
/// although the last one's balance condition (100) holds against the durable
/// 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_computed_on_a_failed_one_is_refused_even_when_the_balance_came_back() {
    let f = fixture(None);
    spawn_apply(&f.svc, TransactionType::Charge, 100, None)
        .await
        .await
        .unwrap()
        .unwrap();
    f.gate.close();
    f.fail_amount.store(10, Ordering::SeqCst);
    let failing = spawn_apply(&f.svc, TransactionType::Charge, 10, None).await;
    let use_on_110 = spawn_apply(&f.svc, TransactionType::Use, 4, None).await;
    let use_on_106 = spawn_apply(&f.svc, TransactionType::Use, 6, None).await;
    let charge_on_100 = spawn_apply(&f.svc, TransactionType::Charge, 20, None).await;
    released(&f.svc).await;
    f.gate.open();
    let charged = charge_on_100.await.unwrap();
    assert!(
        charged.is_err(),
        "a charge computed on a failed change committed: {charged:?}"
    );
    assert_eq!(charged.unwrap_err().code(), "WRITE_CONFLICT");
    assert_eq!(failing.await.unwrap().unwrap_err().code(), "STORE_ERROR");
    for refused in [use_on_110, use_on_106] {
        let used = refused.await.unwrap().unwrap_err();
        assert_eq!(used.code(), "WRITE_CONFLICT", "{used}");
    }
    assert_eq!(f.svc.point(id(1)).await.unwrap().point, 100);
    assert_eq!(f.svc.histories(id(1)).await.unwrap().len(), 1);
    // The pipeline drained: the next change computes on the durable 100.
    f.fail_amount.store(0, Ordering::SeqCst);
    let next = spawn_apply(&f.svc, TransactionType::Charge, 7, None).await;
    assert_eq!(next.await.unwrap().unwrap().point.point, 107);
    assert_eq!(f.store.sequenced_users(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_while_the_first_is_sequenced_replays_once_it_is_durable() {
    let f = fixture(None);
    f.gate.close();
    let first = spawn_apply(&f.svc, TransactionType::Charge, 100, Some("k")).await;
    let again = spawn_apply(&f.svc, TransactionType::Charge, 100, Some("k")).await;
    let other = spawn_apply(&f.svc, TransactionType::Charge, 5, Some("k")).await;
    released(&f.svc).await;
    until(|| f.store.stats().barriers == 2).await;
    assert!(!again.is_finished() && !other.is_finished());
    f.gate.open();
    let first = first.await.unwrap().unwrap();
    let again = again.await.unwrap().unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(again.point, first.point);
    assert!(matches!(
        other.await.unwrap(),
        Err(PointError::IdempotencyKeyReused { .. })
    ));
    assert_eq!(
        f.svc.histories(id(1)).await.unwrap().len(),
        1,
        "applied once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_changes_from_the_same_read_the_sequenced_state_refuses_the_second_at_once() {
    let f = fixture(None);
    f.gate.close();
    let first = f
        .store
        .sequence(Unsequenced::for_tests(change_from(1, Some(0), 10, 10)))
        .await
        .unwrap();
    let second = f
        .store
        .sequence(Unsequenced::for_tests(change_from(1, Some(0), 20, 20)))
        .await;
    let Err(refused) = second else {
        panic!("a stale change was sequenced")
    };
    assert!(refused.is_conflict(), "{refused}");
    f.gate.open();
    assert_eq!(first.await.unwrap().user_point.point, 10);
    let history = f.store.histories(id(1)).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(f.store.user_point(id(1)).await.unwrap().unwrap().point, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_without_the_condition_the_pipeline_loses_an_update() {
    let f = fixture(None);
    f.gate.close();
    let first = f
        .store
        .sequence(Unsequenced::for_tests(change_from(1, None, 10, 10)))
        .await
        .unwrap();
    let second = f
        .store
        .sequence(Unsequenced::for_tests(change_from(1, None, 20, 20)))
        .await
        .unwrap();
    f.gate.open();
    first.await.unwrap();
    second.await.unwrap();
    let sum: u64 = f
        .store
        .histories(id(1))
        .await
        .unwrap()
        .iter()
        .map(|h| h.amount.get())
        .sum();
    let balance = f.store.user_point(id(1)).await.unwrap().unwrap().point;
    assert_eq!((sum, balance), (30, 20), "the +10 is in the history only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_answering_at_sequencing_acknowledges_what_is_not_durable() {
    let f = fixture(Some(NegativeControl::AnswerAtSequencing));
    f.gate.close();
    f.fail_commits.store(true, Ordering::SeqCst);
    // Acknowledged while the writer is held at the gate, then never durable.
    let answer = spawn_apply(&f.svc, TransactionType::Charge, 100, None)
        .await
        .await
        .unwrap();
    assert_eq!(answer.unwrap().point.point, 100);
    f.gate.open();
    until(|| f.store.is_stopped()).await;
    assert_eq!(
        f.svc.point(id(1)).await.unwrap().point,
        0,
        "acknowledged, lost"
    );
}

/// A panic in the writer thread (a bug) while it writes a batch: every
/// caller of that batch and after learns a coded 5xx (the outcome unknown, or
/// the store stopped), the store fails stop (`ready` refuses, later changes
/// are refused at once), no user's sequenced entry is left pending, and
/// reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_panics_mid_batch_answers_its_callers_and_fails_stop() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let options = SqliteOptions {
        gate: Some(Arc::clone(&gate)),
        panic_amount: Some(13),
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(dir.path().join("p.db"), options).unwrap());
    let svc = Arc::new(PointService::new(
        Arc::clone(&store),
        Policy::default(),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    ));
    gate.close();
    let panicking = spawn_apply(&svc, TransactionType::Charge, 13, None).await;
    let after = spawn_apply(&svc, TransactionType::Charge, 7, Some("k")).await;
    released(&svc).await;
    gate.open();
    let code = |answer: Result<Applied, PointError>| answer.unwrap_err().code();
    assert_eq!(code(panicking.await.unwrap()), "STORE_OUTCOME_UNKNOWN");
    let after = code(after.await.unwrap());
    assert!(
        ["STORE_OUTCOME_UNKNOWN", "STORE_UNAVAILABLE"].contains(&after),
        "{after}"
    );
    // Stopped before either caller heard (the caller side marks it when its
    // reply was dropped).
    assert!(store.is_stopped(), "the store failed stop");
    assert!(store.ready().await.is_err());
    // The writer clears the dead batch's sequenced entries right after it
    // caught the panic: none stays pending.
    until(|| store.sequenced_users() == 0).await;
    let next = spawn_apply(&svc, TransactionType::Charge, 1, None).await;
    assert_eq!(code(next.await.unwrap()), "STORE_UNAVAILABLE");
    // Reads go on: nothing of the panicked batch was written.
    assert_eq!(svc.point(id(1)).await.unwrap().point, 0);
    assert!(svc.histories(id(1)).await.unwrap().is_empty());
}
