//! The service over a pipelined store: it sequences instead of committing,
//! releases the user once the change is sequenced, hands the change the mark
//! of the read it was computed from, and holds an answer computed from a
//! marked read until that read has settled.

use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::*;
use crate::clock::ManualClock;
use crate::error::{StoreError, StoreErrorKind};
use crate::store::memory::MemoryStore;
use crate::store::{
    BoxFuture, Committed, Pending, PipelinedStore, ReadMark, SequencedRead, Unsequenced,
};

/// Drive a future that never waits to completion.
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("this test's store never waits"),
    }
}

fn id(raw: u64) -> UserId {
    UserId::new(raw).unwrap()
}

fn amount(raw: u64) -> Amount {
    Amount::new(raw).unwrap()
}

/// A pipelined store over the memory store that notes what it sees: whether
/// the user was still locked when a change was sequenced and when its answer
/// was awaited, and the mark each change carried. Its reads are marked when
/// `settles` is set, settling with that.
struct Sequencer {
    inner: MemoryStore,
    /// The service's lock, to look at.
    lock: KeyedLock<UserId>,
    settles: Option<Result<(), StoreError>>,
    seen: Mutex<Vec<Seen>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A change sequenced: the user locked then, and its mark.
    Sequenced { locked: bool, mark: Option<u64> },
    /// Its answer awaited: the user locked then.
    Awaited { locked: bool },
    /// A plain commit (the service must not use it here).
    Committed,
}

/// The brand of this store's marks.
struct Brand;

impl Sequencer {
    fn new(lock: KeyedLock<UserId>, settles: Option<Result<(), StoreError>>) -> Self {
        Self {
            inner: MemoryStore::new(),
            lock,
            settles,
            seen: Mutex::default(),
        }
    }

    fn locked(&self, user: UserId) -> bool {
        self.lock.try_lock(user).is_none()
    }

    fn note(&self, seen: Seen) {
        self.seen.lock().unwrap().push(seen);
    }

    fn seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl PointStore for Sequencer {
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        self.inner.user_point(id)
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        self.inner.histories(id)
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        self.note(Seen::Committed);
        self.inner.commit(change)
    }

    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>> {
        self.inner.idempotency_record(id, key)
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.inner.sweep_idempotency(expired_before, limit)
    }

    fn pipelined(&self) -> Option<&dyn PipelinedStore> {
        Some(self)
    }
}

impl Sequencer {
    fn read<T>(&self, value: T) -> SequencedRead<'_, T> {
        match &self.settles {
            Some(settles) => SequencedRead::marked(
                value,
                ReadMark::new::<Brand>(7),
                Box::pin(std::future::ready(settles.clone())),
            ),
            None => SequencedRead::durable(value),
        }
    }
}

impl PipelinedStore for Sequencer {
    fn sequenced_point(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<SequencedRead<'_, Option<UserPoint>>, StoreError>> {
        Box::pin(async move { Ok(self.read(self.inner.user_point(id).await?)) })
    }

    fn sequenced_idempotency_record<'a>(
        &'a self,
        id: UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<SequencedRead<'a, Option<IdempotencyRecord>>, StoreError>> {
        Box::pin(async move { Ok(self.read(self.inner.idempotency_record(id, key).await?)) })
    }

    fn sequence(&self, change: Unsequenced) -> BoxFuture<'_, Result<Pending<'_>, StoreError>> {
        Box::pin(async move {
            let user = change.change().user_id();
            let mark = change.change().read_mark().and_then(ReadMark::get::<Brand>);
            let change = change.into_sequenced();
            self.note(Seen::Sequenced {
                locked: self.locked(user),
                mark,
            });
            let pending: Pending<'_> = Box::pin(async move {
                self.note(Seen::Awaited {
                    locked: self.locked(user),
                });
                self.inner.commit(change).await
            });
            Ok(pending)
        })
    }
}

fn service(settles: Option<Result<(), StoreError>>) -> PointService<Sequencer> {
    let lock = KeyedLock::new();
    PointService::with_lock(
        Sequencer::new(lock.clone(), settles),
        Policy::default(),
        Arc::new(ManualClock::new(0)),
        lock,
    )
}

#[test]
fn the_user_is_released_once_the_change_is_sequenced_before_it_is_answered() {
    let svc = service(None);
    let held = Arc::new(now(svc.lock().lock(id(1))));
    assert_eq!(now(svc.charge(held, amount(100))).unwrap().point, 100);
    assert_eq!(
        svc.store.seen(),
        [
            // The service still held its guard while the store sequenced.
            Seen::Sequenced {
                locked: true,
                mark: None
            },
            // Then it let the user go, and waited for the answer.
            Seen::Awaited { locked: false }
        ]
    );
    assert_eq!(now(svc.point(id(1))).unwrap().point, 100);
}

#[test]
fn a_caller_that_keeps_a_clone_of_the_guard_keeps_the_user_locked() {
    let svc = service(None);
    let held = Arc::new(now(svc.lock().lock(id(1))));
    now(svc.charge(Arc::clone(&held), amount(100))).unwrap();
    assert_eq!(svc.store.seen()[1], Seen::Awaited { locked: true });
    drop(held);
    assert!(svc.lock().try_lock(id(1)).is_some());
}

#[test]
fn a_change_carries_the_mark_of_the_read_it_was_computed_from() {
    let svc = service(Some(Ok(())));
    let held = Arc::new(now(svc.lock().lock(id(1))));
    now(svc.charge(held, amount(100))).unwrap();
    assert_eq!(
        svc.store.seen()[0],
        Seen::Sequenced {
            locked: true,
            mark: Some(7)
        }
    );
    // Another store cannot read it as its own.
    assert_eq!(ReadMark::new::<Brand>(7).get::<()>(), None);
}

#[test]
fn a_refusal_computed_on_a_marked_read_stands_once_the_read_has_settled() {
    let svc = service(Some(Ok(())));
    let held = Arc::new(now(svc.lock().lock(id(1))));
    assert_eq!(
        now(svc.use_points(held, amount(5))),
        Err(PointError::InsufficientBalance {
            balance: 0,
            amount: 5
        })
    );
}

#[test]
fn a_refusal_computed_on_a_read_that_failed_becomes_the_store_s_error() {
    let failed = StoreError::with_kind(StoreErrorKind::Unavailable, "what the read showed failed");
    let svc = service(Some(Err(failed.clone())));
    let held = Arc::new(now(svc.lock().lock(id(1))));
    assert_eq!(
        now(svc.use_points(held, amount(5))),
        Err(PointError::Store(failed))
    );
    assert!(svc.store.seen().is_empty(), "nothing sequenced");
}

#[test]
fn a_store_that_is_not_pipelined_gets_commits() {
    // `PointStore::pipelined` is `None` by default: the memory store commits.
    let svc = PointService::new(
        MemoryStore::new(),
        Policy::default(),
        Arc::new(ManualClock::new(0)),
    );
    assert!(svc.store.pipelined().is_none());
    let held = Arc::new(now(svc.lock().lock(id(1))));
    let answered = now(svc.charge(Arc::clone(&held), amount(3))).unwrap();
    assert_eq!(answered.point, 3);
}
