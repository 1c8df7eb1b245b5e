//! A batch's decisions on the rows it found: each user's items in order on
//! the state the ones before left, the balances to insert or update, the
//! history and key columns, the answers' history ids, and the failures that
//! stay with their own item.

use std::sync::Arc;

use pointlock_core::{
    Amount, Change, Committed, Decided, IdempotencyKey, IdempotencyRecord, KeyedLock, PointError,
    Policy, Request, StoreError, StoreErrorKind, TransactionType, UserId, UserPoint,
};
use tokio::sync::oneshot;

use super::{plan, Answer, Found, Points};
use crate::postgres::queue::{Item, Taken};

use TransactionType::{Charge, Use};

fn id(raw: u64) -> UserId {
    UserId::new(raw).unwrap()
}

fn amount(raw: u64) -> Amount {
    Amount::new(raw).unwrap()
}

fn key(raw: &str) -> IdempotencyKey {
    IdempotencyKey::new(raw).unwrap()
}

/// A request of `user` at `millis`, with a maximum balance of 100. Its guard
/// is of a lock that excludes nothing, so one user may have several.
fn request(user: u64, kind: TransactionType, n: u64, millis: i64) -> Request {
    request_up_to(100, user, kind, n, millis)
}

fn request_up_to(max: u64, user: u64, kind: TransactionType, n: u64, millis: i64) -> Request {
    let held = Arc::new(KeyedLock::unsynchronized().try_lock(id(user)).unwrap());
    Request::for_tests(held, kind, amount(n), millis, Policy::new(max))
}

/// A change of `user` from `expected` to `point`.
fn change(user: u64, expected: u64, point: u64, millis: i64) -> Change {
    let held = Arc::new(KeyedLock::unsynchronized().try_lock(id(user)).unwrap());
    let (kind, n) = if point >= expected {
        (Charge, point - expected)
    } else {
        (Use, expected - point)
    };
    Change::for_tests(held, Some(expected), point, kind, amount(n), millis)
}

fn placed(request: Request) -> Item {
    Item::Request(request, oneshot::channel().0)
}

fn placed_change(change: Change) -> Item {
    Item::Change(change, oneshot::channel().0)
}

fn batch(users: impl IntoIterator<Item = (u64, Vec<Item>)>) -> Vec<Taken> {
    users
        .into_iter()
        .map(|(user, items)| Taken {
            user: id(user),
            items,
        })
        .collect()
}

/// Found rows: `(user, balance, update_millis)`.
fn found(points: &[(u64, u64, i64)]) -> Found {
    let points = points.iter().map(|&(user, point, update_millis)| {
        let point = UserPoint {
            id: id(user),
            point,
            update_millis,
        };
        (id(user), point)
    });
    Found {
        points: points.collect(),
        ..Found::default()
    }
}

fn record(raw: &str, kind: TransactionType, n: u64, point: u64, millis: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key(raw),
        kind,
        amount: amount(n),
        point,
        time_millis: millis,
    }
}

fn decided(answer: &Answer) -> &Decided {
    match answer {
        Answer::Request(Ok(decided)) => decided,
        _ => panic!("not a decided request"),
    }
}

/// The rows of an applied request or change.
fn committed(answer: &Answer) -> &Committed {
    match answer {
        Answer::Request(Ok(Decided::Applied(committed))) | Answer::Change(Ok(committed)) => {
            committed
        }
        _ => panic!("not applied"),
    }
}

fn failed(answer: &Answer) -> &StoreError {
    match answer {
        Answer::Request(Err(error)) | Answer::Change(Err(error)) => error,
        _ => panic!("not failed"),
    }
}

/// `(ids, points, millis)` of balances to write.
fn rows(points: &Points) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let super::Points {
        ids,
        points,
        millis,
    } = points;
    (ids.clone(), points.clone(), millis.clone())
}

/// Each request is decided on the balance the one before left, starting
/// from the found balance; the row written is the last state.
#[test]
fn one_users_requests_are_decided_in_order_on_the_state_the_previous_left() {
    let items = vec![
        placed(request(1, Charge, 30, 10)),
        placed(request(1, Use, 60, 11)),
        placed(request(1, Use, 30, 12)),
    ];
    let plan = plan(&batch([(1, items)]), &found(&[(1, 50, 1)]));
    let answers = &plan.answers[0];
    assert_eq!(committed(&answers[0]).user_point.point, 80);
    assert_eq!(committed(&answers[1]).user_point.point, 20);
    assert_eq!(
        decided(&answers[2]),
        &Decided::Refused(PointError::InsufficientBalance {
            balance: 20,
            amount: 30
        })
    );
    assert_eq!(rows(&plan.updates), (vec![1], vec![20], vec![11]));
    assert_eq!(rows(&plan.inserts), (vec![], vec![], vec![]));
}

/// A user without a row is inserted, one with a row updated, and one whose
/// balance did not change (only refusals) is written neither way.
#[test]
fn absent_users_are_inserted_present_ones_updated_unchanged_ones_neither() {
    let taken = batch([
        (1, vec![placed(request(1, Charge, 10, 5))]),
        (2, vec![placed(request(2, Use, 10, 6))]),
        (3, vec![placed(request(3, Use, 10, 7))]),
        (4, vec![placed(request(4, Use, 1, 8))]),
    ]);
    let plan = plan(&taken, &found(&[(2, 50, 1), (3, 5, 1)]));
    assert_eq!(rows(&plan.inserts), (vec![1], vec![10], vec![5]));
    assert_eq!(rows(&plan.updates), (vec![2], vec![40], vec![6]));
    assert!(matches!(decided(&plan.answers[2][0]), Decided::Refused(_)));
    assert!(matches!(decided(&plan.answers[3][0]), Decided::Refused(_)));
}

/// One history row per applied answer, in the batch's order; `assign` hands
/// the ids, sorted, to those answers in that order and to no other.
#[test]
fn history_columns_in_order_and_assign_numbers_the_applied_answers() {
    let taken = batch([
        (
            1,
            vec![
                placed(request(1, Charge, 10, 1)),
                placed(request(1, Use, 100, 2)),
                placed(request(1, Use, 3, 3)),
            ],
        ),
        (
            2,
            vec![
                placed(request(2, Charge, 7, 4)),
                Item::Barrier(oneshot::channel().0),
            ],
        ),
    ]);
    let mut plan = plan(&taken, &Found::default());
    assert!(plan.writes());
    assert_eq!(plan.history.users, [1, 1, 2]);
    assert_eq!(plan.history.kinds, ["CHARGE", "USE", "CHARGE"]);
    assert_eq!(plan.history.amounts, [10, 3, 7]);
    assert_eq!(plan.history.millis, [1, 3, 4]);
    plan.assign(vec![12, 10, 11]).unwrap();
    assert_eq!(committed(&plan.answers[0][0]).history.id, 10);
    assert!(matches!(decided(&plan.answers[0][1]), Decided::Refused(_)));
    assert_eq!(committed(&plan.answers[0][2]).history.id, 11);
    assert_eq!(committed(&plan.answers[1][0]).history.id, 12);
    assert!(matches!(plan.answers[1][1], Answer::Barrier));
}

/// A found record of the key made after `expired_before` answers the request
/// (nothing written); an expired one is replaced by the applied request's.
#[test]
fn a_live_record_answers_an_expired_one_is_replaced() {
    let mut found = found(&[(1, 50, 1)]);
    let live = record("live", Use, 9, 41, 100);
    found.records.insert((id(1), key("live")), live.clone());
    found
        .records
        .insert((id(1), key("old")), record("old", Use, 9, 41, 40));
    let items = vec![
        placed(request(1, Charge, 5, 200).with_key(key("live"), 50)),
        placed(request(1, Charge, 5, 201).with_key(key("old"), 50)),
    ];
    let plan = plan(&batch([(1, items)]), &found);
    assert_eq!(decided(&plan.answers[0][0]), &Decided::Recorded(live));
    assert_eq!(committed(&plan.answers[0][1]).user_point.point, 55);
    assert_eq!(plan.history.users, [1]);
    let keys = &plan.keys;
    assert_eq!(
        (&keys.users[..], &keys.keys[..]),
        (&[1][..], &["old".to_owned()][..])
    );
    assert_eq!((keys.kinds[0], keys.amounts[0]), ("CHARGE", 5));
    assert_eq!((keys.points[0], keys.millis[0]), (55, 201));
}

/// The same key twice in one batch: the second is answered from the record
/// the first made, not applied again.
#[test]
fn the_same_key_twice_in_a_batch_is_answered_from_the_first() {
    let items = vec![
        placed(request(1, Charge, 10, 10).with_key(key("k"), 0)),
        placed(request(1, Charge, 10, 11).with_key(key("k"), 0)),
    ];
    let plan = plan(&batch([(1, items)]), &Found::default());
    let first = record("k", Charge, 10, 10, 10);
    assert_eq!(decided(&plan.answers[0][1]), &Decided::Recorded(first));
    assert_eq!(rows(&plan.inserts), (vec![1], vec![10], vec![10]));
    assert_eq!(plan.history.users.len(), 1);
    assert_eq!(plan.keys.keys, ["k"]);
}

/// A key whose first record of the batch has already expired for the second
/// request: both apply, and the key is one row holding the last record.
#[test]
fn a_key_expired_within_the_batch_is_written_once_with_the_last_record() {
    let items = vec![
        placed(request(1, Charge, 10, 10).with_key(key("k"), 0)),
        placed(request(1, Charge, 5, 20).with_key(key("k"), 10)),
    ];
    let plan = plan(&batch([(1, items)]), &Found::default());
    assert_eq!(committed(&plan.answers[0][1]).user_point.point, 15);
    assert_eq!(plan.history.users.len(), 2);
    let keys = &plan.keys;
    assert_eq!(keys.keys, ["k"]);
    assert_eq!(
        (keys.amounts[0], keys.points[0], keys.millis[0]),
        (5, 15, 20)
    );
}

/// A balance the signed 64-bit column cannot hold fails that request alone
/// (STORE_ERROR, nothing written for it); the next is decided on the state
/// before it.
#[test]
fn a_balance_above_i64_max_fails_that_request_alone() {
    let top = i64::MAX as u64;
    let items = vec![
        placed(request_up_to(u64::MAX, 1, Charge, 10, 5)),
        placed(request_up_to(u64::MAX, 1, Use, 5, 6)),
    ];
    let plan = plan(&batch([(1, items)]), &found(&[(1, top - 5, 1)]));
    let error = failed(&plan.answers[0][0]);
    assert_eq!(error.kind(), StoreErrorKind::Failed);
    assert_eq!(error.code(), "STORE_ERROR");
    assert_eq!(committed(&plan.answers[0][1]).user_point.point, top - 10);
    assert_eq!(plan.history.amounts, [5]);
    assert_eq!(rows(&plan.updates), (vec![1], vec![i64::MAX - 10], vec![6]));
}

/// A change applies only if the balance at its place is the one it expects;
/// each refusal is a conflict, counted.
#[test]
fn a_change_is_checked_against_its_condition() {
    let items = vec![
        placed_change(change(1, 40, 60, 5)),
        placed_change(change(1, 50, 70, 6)),
        placed_change(change(1, 50, 80, 7)),
        placed(request(1, Use, 10, 8)),
    ];
    let plan = plan(&batch([(1, items)]), &found(&[(1, 50, 1)]));
    let error = failed(&plan.answers[0][0]);
    assert!(error.is_conflict());
    assert_eq!(error.code(), "WRITE_CONFLICT");
    assert_eq!(committed(&plan.answers[0][1]).user_point.point, 70);
    assert!(
        failed(&plan.answers[0][2]).is_conflict(),
        "the balance is 70 now"
    );
    assert_eq!(committed(&plan.answers[0][3]).user_point.point, 60);
    assert_eq!(plan.conflicts, 2);
    assert_eq!(plan.history.amounts, [20, 10]);
}

/// A barrier is answered in its place and writes nothing.
#[test]
fn a_barrier_is_answered_and_writes_nothing() {
    let taken = batch([(1, vec![Item::Barrier(oneshot::channel().0)])]);
    let plan = plan(&taken, &found(&[(1, 50, 1)]));
    assert!(matches!(plan.answers[0][..], [Answer::Barrier]));
    assert!(!plan.writes());
    assert!(plan.updates.ids.is_empty() && plan.inserts.ids.is_empty());
}

/// `assign` with more or fewer ids than history rows fails and numbers
/// nothing.
#[test]
fn assign_with_the_wrong_number_of_ids_fails() {
    let items = vec![
        placed(request(1, Charge, 1, 1)),
        placed(request(1, Charge, 2, 2)),
    ];
    let mut plan = plan(&batch([(1, items)]), &Found::default());
    assert!(plan.assign(vec![1]).is_err());
    assert!(plan.assign(vec![1, 2, 3]).is_err());
    assert_eq!(committed(&plan.answers[0][0]).history.id, 0);
    assert_eq!(committed(&plan.answers[0][1]).history.id, 0);
    plan.assign(vec![7, 8]).unwrap();
    assert_eq!(committed(&plan.answers[0][1]).history.id, 8);
}
