//! The service's unit tests over the memory store and hooked stores.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::*;
use crate::clock::ManualClock;
use crate::domain::PointHistory;
use crate::store::memory::MemoryStore;

/// Drive a future that never waits (the fast memory store) to completion.
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the fast memory store never waits"),
    }
}

fn service() -> (PointService<MemoryStore>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000));
    let svc = PointService::new(MemoryStore::new(), Policy::default(), clock.clone());
    (svc, clock)
}

fn id(raw: u64) -> UserId {
    UserId::new(raw).unwrap()
}

fn amount(raw: u64) -> Amount {
    Amount::new(raw).unwrap()
}

#[test]
fn unknown_user_has_zero_points_stamped_now_and_no_history() {
    let (svc, _) = service();
    let p = now(svc.point(id(9))).unwrap();
    assert_eq!((p.id, p.point, p.update_millis), (id(9), 0, 1_000));
    assert!(now(svc.histories(id(9))).unwrap().is_empty());
}

#[test]
fn charge_and_use_update_balance_and_history_in_order() {
    let (svc, clock) = service();
    let held = Arc::new(now(svc.lock().lock(id(1))));
    assert_eq!(
        now(svc.charge(Arc::clone(&held), amount(100)))
            .unwrap()
            .point,
        100
    );
    clock.advance_millis(10);
    let after = now(svc.use_points(Arc::clone(&held), amount(40))).unwrap();
    assert_eq!((after.point, after.update_millis), (60, 1_010));
    drop(held);
    let rows = now(svc.histories(id(1))).unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|h| (h.id, h.kind, h.amount.get(), h.time_millis))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, TransactionType::Charge, 100, 1_000),
            (2, TransactionType::Use, 40, 1_010)
        ]
    );
    assert_eq!(now(svc.point(id(1))).unwrap().point, 60);
}

#[test]
fn history_ids_increase_across_users() {
    let (svc, _) = service();
    for user in [3, 1, 2] {
        let held = Arc::new(now(svc.lock().lock(id(user))));
        now(svc.charge(Arc::clone(&held), amount(1))).unwrap();
    }
    let ids: Vec<u64> = [3, 1, 2]
        .iter()
        .flat_map(|&u| now(svc.histories(id(u))).unwrap())
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
}

#[test]
fn rejected_changes_change_nothing() {
    let (svc, _) = service();
    let held = Arc::new(now(svc.lock().lock(id(1))));
    now(svc.charge(Arc::clone(&held), amount(10_000))).unwrap();
    assert!(matches!(
        now(svc.charge(Arc::clone(&held), amount(1))),
        Err(PointError::MaxBalanceExceeded { .. })
    ));
    assert!(matches!(
        now(svc.charge(Arc::clone(&held), amount(u64::try_from(i64::MAX).unwrap()))),
        Err(PointError::MaxBalanceExceeded { .. })
    ));
    now(svc.use_points(Arc::clone(&held), amount(10_000))).unwrap();
    assert_eq!(
        now(svc.use_points(Arc::clone(&held), amount(1))),
        Err(PointError::InsufficientBalance {
            balance: 0,
            amount: 1
        })
    );
    drop(held);
    assert_eq!(now(svc.point(id(1))).unwrap().point, 0);
    assert_eq!(now(svc.histories(id(1))).unwrap().len(), 2);
}

#[test]
fn repeated_i64_max_charges_never_overflow() {
    let clock = Arc::new(ManualClock::new(0));
    let svc = PointService::new(MemoryStore::new(), Policy::new(u64::MAX), clock);
    let held = Arc::new(now(svc.lock().lock(id(1))));
    let max = amount(u64::try_from(i64::MAX).unwrap());
    assert!(now(svc.charge(Arc::clone(&held), max)).is_ok());
    assert!(now(svc.charge(Arc::clone(&held), max)).is_ok());
    // 2 * (2^63 - 1) + 2^63 - 1 > u64::MAX: refused, not wrapped.
    assert!(matches!(
        now(svc.charge(Arc::clone(&held), max)),
        Err(PointError::MaxBalanceExceeded { .. })
    ));
    assert_eq!(now(svc.point(id(1))).unwrap().point, 2 * (i64::MAX as u64));
}

#[test]
fn use_from_a_balance_above_a_lowered_max_works_and_charge_is_refused() {
    // A balance of 15,000 written while the maximum was higher; then the
    // operator lowers --max-balance to 10,000 (operator input: no panic).
    let store = std::sync::Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(0));
    let before = PointService::new(Arc::clone(&store), Policy::new(20_000), clock.clone());
    let held = Arc::new(now(before.lock().lock(id(1))));
    now(before.charge(Arc::clone(&held), amount(15_000))).unwrap();
    drop(held);

    let after = PointService::new(store, Policy::new(10_000), clock);
    let held = Arc::new(now(after.lock().lock(id(1))));
    assert_eq!(
        now(after.use_points(Arc::clone(&held), amount(1_000)))
            .unwrap()
            .point,
        14_000
    );
    assert!(matches!(
        now(after.charge(Arc::clone(&held), amount(1))),
        Err(PointError::MaxBalanceExceeded {
            balance: 14_000,
            ..
        })
    ));
    drop(held);
    assert_eq!(now(after.point(id(1))).unwrap().point, 14_000);
}

/// A memory store that runs a hook before each balance read and each
/// commit: how these tests make another writer act behind the service's
/// lock at a chosen moment.
struct Hooked {
    inner: MemoryStore,
    before_read: Box<ReadHook>,
    before_commit: Box<CommitHook>,
}

type ReadHook = dyn Fn(&MemoryStore, UserId) + Send + Sync;
type CommitHook = dyn Fn(&MemoryStore, &Change) + Send + Sync;

impl Hooked {
    fn new(
        before_read: impl Fn(&MemoryStore, UserId) + Send + Sync + 'static,
        before_commit: impl Fn(&MemoryStore, &Change) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: MemoryStore::new(),
            before_read: Box::new(before_read),
            before_commit: Box::new(before_commit),
        }
    }
}

impl PointStore for Hooked {
    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> crate::BoxFuture<'_, Result<Option<crate::IdempotencyRecord>, crate::StoreError>> {
        self.inner.idempotency_record(id, key)
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> crate::BoxFuture<'_, Result<usize, crate::StoreError>> {
        self.inner.sweep_idempotency(expired_before, limit)
    }

    fn user_point(
        &self,
        id: UserId,
    ) -> crate::BoxFuture<'_, Result<Option<UserPoint>, crate::StoreError>> {
        (self.before_read)(&self.inner, id);
        self.inner.user_point(id)
    }

    fn histories(
        &self,
        id: UserId,
    ) -> crate::BoxFuture<'_, Result<Vec<PointHistory>, crate::StoreError>> {
        self.inner.histories(id)
    }

    fn commit(
        &self,
        change: Change,
    ) -> crate::BoxFuture<'_, Result<crate::Committed, crate::StoreError>> {
        (self.before_commit)(&self.inner, &change);
        self.inner.commit(change)
    }
}

/// Commit `change` to `store` as a writer that bypasses the lock would.
fn behind_the_lock(
    store: &MemoryStore,
    change: impl FnOnce(Arc<KeyGuard<UserId>>) -> Change,
    user: UserId,
) {
    let bypass = KeyedLock::unsynchronized();
    now(store.commit(change(Arc::new(now(bypass.lock(user)))))).unwrap();
}

/// A store that, before each of its first `times` commits, slips in a
/// change of +1 behind the service's back (as another process on the same
/// database would), so the service's change was computed from a stale
/// balance.
fn meddler(times: u32) -> Hooked {
    let meddle = std::sync::atomic::AtomicU32::new(times);
    Hooked::new(
        |_, _| {},
        move |inner, change| {
            let meddling = meddle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if meddling {
                let id = change.user_id();
                let stored = now(inner.user_point(id)).unwrap().map_or(0, |p| p.point);
                behind_the_lock(
                    inner,
                    |held| {
                        Change::for_tests(
                            held,
                            None,
                            stored + 1,
                            TransactionType::Charge,
                            amount(1),
                            0,
                        )
                    },
                    id,
                );
            }
        },
    )
}

fn meddled(times: u32) -> PointService<Hooked> {
    PointService::new(
        meddler(times),
        Policy::default(),
        Arc::new(ManualClock::new(0)),
    )
}

/// Invariant 1 over the memory store: the balance equals the replayed history.
fn replays(svc: &PointService<Hooked>, user: u64) -> u64 {
    let balance = now(svc.point(id(user))).unwrap().point;
    let mut sum: i128 = 0;
    for row in now(svc.histories(id(user))).unwrap() {
        match row.kind {
            TransactionType::Charge => sum += i128::from(row.amount.get()),
            TransactionType::Use => sum -= i128::from(row.amount.get()),
        }
    }
    assert_eq!(i128::from(balance), sum, "balance != history");
    balance
}

#[test]
fn a_refused_commit_is_read_again_and_retried_on_top_of_the_newer_balance() {
    let svc = meddled(2);
    let held = Arc::new(now(svc.lock().lock(id(1))));
    // Two sneaked +1s, each refusing one attempt; the third applies on top.
    assert_eq!(
        now(svc.charge(Arc::clone(&held), amount(100)))
            .unwrap()
            .point,
        102
    );
    assert_eq!(svc.commit_conflicts(), 2);
    assert_eq!(replays(&svc, 1), 102);
    // The policy is applied again to the new balance: a use of 102 fits.
    assert_eq!(
        now(svc.use_points(Arc::clone(&held), amount(102)))
            .unwrap()
            .point,
        0
    );
}

#[test]
fn a_balance_that_keeps_changing_ends_in_a_retryable_conflict_that_changed_nothing() {
    let svc = meddled(u32::MAX);
    let held = Arc::new(now(svc.lock().lock(id(1))));
    assert_eq!(
        now(svc.charge(Arc::clone(&held), amount(100))),
        Err(PointError::WriteConflict {
            attempts: COMMIT_ATTEMPTS_MAX
        })
    );
    assert_eq!(
        PointError::WriteConflict { attempts: 1 }.code(),
        "WRITE_CONFLICT"
    );
    assert_eq!(svc.commit_conflicts(), u64::from(COMMIT_ATTEMPTS_MAX));
    // Only the sneaked +1s are there: none of the service's 100.
    assert_eq!(replays(&svc, 1), u64::from(COMMIT_ATTEMPTS_MAX));
}

#[test]
fn negative_control_without_the_condition_a_sneaked_change_is_lost() {
    let svc = meddled(1).without_commit_condition();
    let held = Arc::new(now(svc.lock().lock(id(1))));
    assert_eq!(
        now(svc.charge(Arc::clone(&held), amount(100)))
            .unwrap()
            .point,
        100
    );
    let history: u64 = now(svc.histories(id(1)))
        .unwrap()
        .iter()
        .map(|h| h.amount.get())
        .sum();
    assert_eq!(history, 101, "the sneaked +1 is in the history");
    assert_eq!(
        now(svc.point(id(1))).unwrap().point,
        100,
        "but not in the balance"
    );
}

#[test]
fn a_guard_of_another_lock_is_refused() {
    let (svc, _) = service();
    let other: KeyedLock<UserId> = KeyedLock::new();
    let foreign = Arc::new(now(other.lock(id(1))));
    assert_eq!(
        now(svc.charge(Arc::clone(&foreign), amount(1))),
        Err(PointError::ForeignGuard)
    );
    assert!(now(svc.histories(id(1))).unwrap().is_empty());
}

fn key(raw: &str) -> IdempotencyKey {
    IdempotencyKey::new(raw).unwrap()
}

#[test]
fn a_keyed_change_applies_once_and_its_retry_gets_the_first_answer() {
    let (svc, clock) = service();
    let held = Arc::new(now(svc.lock().lock(id(1))));
    let k = key("order-1");
    let first = now(svc.apply(
        Arc::clone(&held),
        TransactionType::Charge,
        amount(100),
        Some(&k),
    ))
    .unwrap();
    assert!(!first.replayed);
    clock.advance_millis(50);
    let again = now(svc.apply(
        Arc::clone(&held),
        TransactionType::Charge,
        amount(100),
        Some(&k),
    ))
    .unwrap();
    assert_eq!(
        again,
        Applied {
            point: first.point,
            replayed: true
        }
    );
    assert_eq!(svc.idempotent_replays(), 1);
    // Another user's same key is another key.
    let other = Arc::new(now(svc.lock().lock(id(2))));
    let theirs = now(svc.apply(
        Arc::clone(&other),
        TransactionType::Charge,
        amount(100),
        Some(&k),
    ))
    .unwrap();
    assert!(!theirs.replayed);
    drop((held, other));
    assert_eq!(now(svc.point(id(1))).unwrap().point, 100);
    assert_eq!(now(svc.histories(id(1))).unwrap().len(), 1);
    assert_eq!(now(svc.point(id(2))).unwrap().point, 100);
}

#[test]
fn a_key_reused_for_another_request_is_refused_and_changes_nothing() {
    let (svc, _) = service();
    let held = Arc::new(now(svc.lock().lock(id(1))));
    let k = key("k");
    now(svc.apply(
        Arc::clone(&held),
        TransactionType::Charge,
        amount(100),
        Some(&k),
    ))
    .unwrap();
    for (kind, raw) in [(TransactionType::Use, 100), (TransactionType::Charge, 99)] {
        assert_eq!(
            now(svc.apply(Arc::clone(&held), kind, amount(raw), Some(&k))),
            Err(PointError::IdempotencyKeyReused {
                kind: "CHARGE",
                amount: 100
            })
        );
    }
    assert_eq!(
        PointError::IdempotencyKeyReused {
            kind: "CHARGE",
            amount: 1
        }
        .code(),
        "IDEMPOTENCY_KEY_REUSED"
    );
    drop(held);
    assert_eq!(now(svc.point(id(1))).unwrap().point, 100);
    assert_eq!(now(svc.histories(id(1))).unwrap().len(), 1);
    assert_eq!(svc.idempotent_replays(), 0);
}

#[test]
fn a_policy_refusal_is_not_recorded_so_its_retry_is_decided_afresh() {
    let (svc, _) = service();
    let held = Arc::new(now(svc.lock().lock(id(1))));
    let k = key("use-50");
    assert!(matches!(
        now(svc.apply(
            Arc::clone(&held),
            TransactionType::Use,
            amount(50),
            Some(&k)
        )),
        Err(PointError::InsufficientBalance { .. })
    ));
    now(svc.charge(Arc::clone(&held), amount(80))).unwrap();
    let applied = now(svc.apply(
        Arc::clone(&held),
        TransactionType::Use,
        amount(50),
        Some(&k),
    ))
    .unwrap();
    assert_eq!((applied.point.point, applied.replayed), (30, false));
}

#[test]
fn a_key_expires_after_the_ttl_and_then_applies_again() {
    let (svc, clock) = service();
    let svc = svc.with_idempotency_ttl(std::time::Duration::from_millis(1_000));
    let held = Arc::new(now(svc.lock().lock(id(1))));
    let k = key("k");
    now(svc.apply(
        Arc::clone(&held),
        TransactionType::Charge,
        amount(10),
        Some(&k),
    ))
    .unwrap();
    clock.advance_millis(999);
    assert!(
        now(svc.apply(
            Arc::clone(&held),
            TransactionType::Charge,
            amount(10),
            Some(&k)
        ))
        .unwrap()
        .replayed
    );
    // Expired: the key is free, even for another request, and the new record
    // replaces the old one.
    clock.advance_millis(1);
    let fresh =
        now(svc.apply(Arc::clone(&held), TransactionType::Use, amount(5), Some(&k))).unwrap();
    assert_eq!((fresh.point.point, fresh.replayed), (5, false));
    assert!(
        now(svc.apply(Arc::clone(&held), TransactionType::Use, amount(5), Some(&k)))
            .unwrap()
            .replayed
    );
    drop(held);
    // The sweep removes only what has expired: nothing yet, then the record.
    assert_eq!(now(svc.sweep_idempotency(100)).unwrap(), 0);
    clock.advance_millis(1_000);
    assert_eq!(now(svc.sweep_idempotency(100)).unwrap(), 1);
    assert_eq!(now(svc.sweep_idempotency(100)).unwrap(), 0);
    assert_eq!(now(svc.point(id(1))).unwrap().point, 5);
}

#[test]
fn the_sweep_is_bounded_and_keeps_records_replaced_since() {
    let (svc, clock) = service();
    let svc = svc.with_idempotency_ttl(std::time::Duration::from_millis(10));
    for user in 1..=5 {
        let held = Arc::new(now(svc.lock().lock(id(user))));
        now(svc.apply(
            Arc::clone(&held),
            TransactionType::Charge,
            amount(1),
            Some(&key("a")),
        ))
        .unwrap();
    }
    clock.advance_millis(10);
    // User 1's key expired and was used again: the new record must survive.
    let held = Arc::new(now(svc.lock().lock(id(1))));
    now(svc.apply(
        Arc::clone(&held),
        TransactionType::Charge,
        amount(2),
        Some(&key("a")),
    ))
    .unwrap();
    assert_eq!(now(svc.sweep_idempotency(3)).unwrap(), 3);
    assert_eq!(now(svc.sweep_idempotency(3)).unwrap(), 1);
    assert_eq!(now(svc.sweep_idempotency(3)).unwrap(), 0);
    assert!(
        now(svc.apply(
            Arc::clone(&held),
            TransactionType::Charge,
            amount(2),
            Some(&key("a"))
        ))
        .unwrap()
        .replayed
    );
}

#[test]
fn a_record_committed_behind_the_lock_refuses_the_change_and_the_retry_replays_it() {
    // Another process commits the same keyed charge between this service's
    // lookup and its commit: the store's key condition refuses this change,
    // and the retry answers from the other's record: applied once.
    let (svc, histories) = race(true);
    let answer = svc.unwrap();
    assert_eq!((answer.point.point, answer.replayed), (100, true));
    assert_eq!(histories, 1, "applied once");
}

#[test]
fn negative_control_a_record_not_committed_with_its_change_lets_the_retry_apply_twice() {
    // The same race, but the twin's record is not written with its change
    // (as if a store wrote records separately and crashed in between): the
    // stale change is refused by the balance condition, the retry finds no
    // record, and the charge applies twice.
    let (svc, histories) = race(false);
    let answer = svc.unwrap();
    assert_eq!((answer.point.point, answer.replayed), (200, false));
    assert_eq!(histories, 2, "applied twice");
}

/// Charge 100 with key "k" while another writer commits the same keyed
/// charge behind the lock first; the answer and the history's length.
fn race(twin_keyed: bool) -> (Result<Applied, PointError>, usize) {
    // The twin, computed from the same balance, commits first.
    let armed = std::sync::atomic::AtomicBool::new(true);
    let store = Hooked::new(
        |_, _| {},
        move |inner, change| {
            if armed.swap(false, Ordering::SeqCst) {
                let twin = |held| {
                    let twin = Change::for_tests(
                        held,
                        change.expected_point(),
                        change.point(),
                        change.kind(),
                        change.amount(),
                        change.time_millis(),
                    );
                    match change.idempotency_key() {
                        Some(key) if twin_keyed => {
                            twin.with_key_for_tests(key.clone(), change.key_expired_before())
                        }
                        _ => twin,
                    }
                };
                behind_the_lock(inner, twin, change.user_id());
            }
        },
    );
    let svc = PointService::new(store, Policy::default(), Arc::new(ManualClock::new(0)));
    let held = Arc::new(now(svc.lock().lock(id(1))));
    let answer = now(svc.apply(
        Arc::clone(&held),
        TransactionType::Charge,
        amount(100),
        Some(&key("k")),
    ));
    assert_eq!(svc.commit_conflicts(), 1);
    drop(held);
    (answer, now(svc.histories(id(1))).unwrap().len())
}

/// The twin to commit before the next balance read: (operation, amount,
/// key).
type Twin = Arc<std::sync::Mutex<Option<(TransactionType, u64, &'static str)>>>;

/// A store whose next balance read, once `twin` is set, is preceded by that
/// keyed change committed behind the lock (another instance serving the
/// duplicate of the same request): the twin lands between the service's
/// key lookup and its balance read.
fn interloper(twin: Twin) -> Hooked {
    Hooked::new(
        move |inner, id| {
            if let Some((kind, raw, name)) = twin.lock().unwrap().take() {
                let stored = now(inner.user_point(id)).unwrap().map_or(0, |p| p.point);
                let point = match kind {
                    TransactionType::Charge => stored + raw,
                    TransactionType::Use => stored - raw,
                };
                let change = |held| {
                    Change::for_tests(held, Some(stored), point, kind, amount(raw), 0)
                        .with_key_for_tests(key(name), i64::MIN)
                };
                behind_the_lock(inner, change, id);
            }
        },
        |_, _| {},
    )
}

#[test]
fn a_duplicate_applied_between_the_key_lookup_and_the_balance_read_is_replayed_not_refused() {
    // Found by tests/model_http.rs without the lock (the store's condition
    // on, as with several instances on one database): a keyed charge of
    // 7,468 answered 409 "balance 7631 + charge 7468 > max", the 7,631
    // including its own duplicate's 7,468. The request had applied; its
    // answer said it had not. After a refusal the key is looked up again.
    for (kind, raw, opening) in [
        (TransactionType::Charge, 6_000, 0),
        (TransactionType::Use, 60, 100),
    ] {
        let twin: Twin = Arc::default();
        let svc = PointService::new(
            interloper(Arc::clone(&twin)),
            Policy::default(),
            Arc::new(ManualClock::new(0)),
        );
        let held = Arc::new(now(svc.lock().lock(id(1))));
        if opening > 0 {
            now(svc.charge(Arc::clone(&held), amount(opening))).unwrap();
        }
        *twin.lock().unwrap() = Some((kind, raw, "k"));
        let answer = now(svc.apply(Arc::clone(&held), kind, amount(raw), Some(&key("k"))));
        let twin_point = if kind == TransactionType::Charge {
            opening + raw
        } else {
            opening - raw
        };
        assert_eq!(
            answer.map(|a| (a.point.point, a.replayed)),
            Ok((twin_point, true)),
            "{kind:?} {raw}: the twin's answer, replayed"
        );
        drop(held);
        assert_eq!(now(svc.point(id(1))).unwrap().point, twin_point);
    }
}

#[test]
fn a_wall_clock_stepped_forward_does_not_free_a_live_key() {
    let (svc, clock) = service();
    let svc = svc.with_idempotency_ttl(std::time::Duration::from_millis(1_000));
    let held = Arc::new(now(svc.lock().lock(id(1))));
    let k = key("k");
    let charge = |held: &Arc<KeyGuard<UserId>>| {
        now(svc.apply(
            Arc::clone(held),
            TransactionType::Charge,
            amount(10),
            Some(&k),
        ))
        .unwrap()
    };
    assert!(!charge(&held).replayed);
    // The system clock jumps an hour ahead; only 10 ms really passed.
    clock.step_wall_millis(3_600_000);
    clock.advance_millis(10);
    let retry = charge(&held);
    assert!(retry.replayed, "a live key was freed by a clock step");
    assert_eq!(retry.point.point, 10);
    // Stepped back, it lives on too; once the TTL has really passed, it is free.
    clock.step_wall_millis(-7_200_000);
    assert!(charge(&held).replayed);
    clock.step_wall_millis(3_600_000);
    clock.advance_millis(1_000);
    assert!(
        !charge(&held).replayed,
        "expired after the TTL of real time"
    );
    assert_eq!(now(svc.point(id(1))).unwrap().point, 20);
}
