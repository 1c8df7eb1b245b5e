//! [`PointService`]: the wallet's operations, policies applied, under the user's lock.
//!
//! Reads ([`point`](PointService::point), [`histories`](PointService::histories))
//! need no lock. Mutations ([`charge`](PointService::charge),
//! [`use_points`](PointService::use_points)) take a [`KeyGuard`] of the service's
//! own [`KeyedLock`] as proof that the caller holds that user's lock: the user id
//! comes from the guard, so a mutation for user 1 cannot run under user 2's lock, and
//! there is no way to call one without holding the lock.
//!
//! # Two lines of defence
//!
//! 1. **The lock** (the caller's): one request of a user at a time, in arrival
//!    order. The read, the policy check and the commit all happen under it.
//! 2. **The store's condition**: each [`Change`] carries the balance it was
//!    computed from, and the store applies it only if that is still the stored
//!    balance. If it is not (something bypassed the lock: another process on the
//!    same database), the store refuses the change, changing nothing, and the
//!    service reads the balance again, applies the policy again and retries, at
//!    most [`COMMIT_ATTEMPTS_MAX`] times in all; past that it answers
//!    [`PointError::WriteConflict`] (retryable; nothing changed). With the lock in
//!    front the condition never fails.
//!
//! The guard (a clone of the `Arc`) travels with the change into the store, which
//! keeps it until it has answered for the change: dropping the mutation's future
//! mid-commit does not release the user while the change may still be applied.
//! A **pipelined** store (see [`PointStore`]) keeps it only until the change is
//! sequenced: the user's next request then computes on the sequenced state,
//! and every answer computed from state not yet durable waits until it is
//! ([`apply_owned`](PointService::apply_owned)).
//!
//! # Idempotency keys
//!
//! [`apply`](PointService::apply) takes an optional [`IdempotencyKey`]; the
//! semantics are in the [`idempotency`](crate::idempotency) module. Under the
//! user's lock, before anything else, the service looks the key up: a live
//! record of the same request is answered again ([`Applied::replayed`]), one of
//! another request refused ([`PointError::IdempotencyKeyReused`]). Otherwise the
//! change commits together with its record; a record committed meanwhile by a
//! writer that bypassed the lock makes the store refuse the change as a
//! conflict, and the retry finds the record. Such a writer may also have
//! applied this very request between the lookup and the balance read, so that
//! the policy refuses it on a balance that already includes it: before a
//! policy refusal is answered, the key is looked up once more, and a record
//! found then answers instead (a replay, or a 422 for another request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::domain::{Amount, PointHistory, TransactionType, UserId, UserPoint};
use crate::error::PointError;
use crate::idempotency::{IdempotencyKey, IdempotencyRecord, IDEMPOTENCY_TTL_DEFAULT};
use crate::lock::{KeyGuard, KeyedLock};
use crate::policy::Policy;
use crate::store::{Change, PointStore, ReadMark};

/// The most commits one mutation attempts before it answers
/// [`PointError::WriteConflict`]: the first, and re-reads after refused ones.
/// Bounded so that a user whose balance changes without pause (a lock bypassed on
/// purpose, many processes on one hot row) costs each request a few round trips,
/// never an unbounded loop.
pub const COMMIT_ATTEMPTS_MAX: u32 = 8;

/// The answer to a mutation made with [`PointService::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The balance after the change: for a replay, exactly the first answer.
    pub point: UserPoint,
    /// Whether this is the answer to an earlier request with the same
    /// idempotency key, and nothing was applied now.
    pub replayed: bool,
}

/// The point wallet. Cheap to share behind an `Arc`.
pub struct PointService<S> {
    store: S,
    lock: KeyedLock<UserId>,
    policy: Policy,
    clock: Arc<dyn Clock>,
    /// Commits the store refused because the balance had changed (each retried
    /// or, past the bound, answered with a conflict).
    conflicts: AtomicU64,
    /// Requests answered from an idempotency record.
    replays: AtomicU64,
    /// Expired idempotency records removed by sweeps.
    swept: AtomicU64,
    /// How long an idempotency record is kept, in milliseconds.
    idempotency_ttl_millis: i64,
    /// Test-util negative controls only: make unconditional changes.
    #[cfg(any(test, feature = "test-util"))]
    unconditional: bool,
}

impl<S: PointStore> PointService<S> {
    /// A service over `store` with its own lock (measuring waits with `clock`).
    pub fn new(store: S, policy: Policy, clock: Arc<dyn Clock>) -> Self {
        let lock = KeyedLock::with_clock(Arc::clone(&clock));
        Self::with_lock(store, policy, clock, lock)
    }

    /// A service using `lock` for its users: share it with an HTTP layer.
    pub fn with_lock(
        store: S,
        policy: Policy,
        clock: Arc<dyn Clock>,
        lock: KeyedLock<UserId>,
    ) -> Self {
        Self {
            store,
            lock,
            policy,
            clock,
            conflicts: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            swept: AtomicU64::new(0),
            idempotency_ttl_millis: ttl_millis(IDEMPOTENCY_TTL_DEFAULT),
            #[cfg(any(test, feature = "test-util"))]
            unconditional: false,
        }
    }

    /// The same service making **unconditional** changes: the store's condition
    /// switched off, for negative controls that show the lost updates it prevents.
    /// Only with the `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn without_commit_condition(mut self) -> Self {
        self.unconditional = true;
        self
    }

    /// The same service keeping idempotency records for `ttl` (default
    /// [`IDEMPOTENCY_TTL_DEFAULT`]; at least a millisecond).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl_millis = ttl_millis(ttl).max(1);
        self
    }

    /// How long idempotency records are kept.
    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_millis(self.idempotency_ttl_millis.unsigned_abs())
    }

    /// Requests answered again from an idempotency record so far.
    pub fn idempotent_replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// Remove at most `limit` expired idempotency records (a bounded step of a
    /// background sweep); answers how many were removed.
    pub async fn sweep_idempotency(&self, limit: usize) -> Result<usize, PointError> {
        let expired_before = self.key_expired_before();
        let removed = self.store.sweep_idempotency(expired_before, limit).await?;
        self.swept.fetch_add(removed as u64, Ordering::Relaxed);
        Ok(removed)
    }

    /// Expired idempotency records removed by sweeps so far.
    pub fn idempotency_keys_swept(&self) -> u64 {
        self.swept.load(Ordering::Relaxed)
    }

    /// The per-user lock whose guards the mutations demand.
    pub fn lock(&self) -> &KeyedLock<UserId> {
        &self.lock
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Commits the store refused because the balance had changed since it was
    /// read (0 while every writer goes through the lock).
    pub fn commit_conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The user's balance; a user never charged has 0 (stamped now).
    pub async fn point(&self, id: UserId) -> Result<UserPoint, PointError> {
        let found = self.store.user_point(id).await?;
        Ok(found.unwrap_or_else(|| UserPoint {
            id,
            point: 0,
            update_millis: self.clock.now_millis(),
        }))
    }

    /// Whether the store can take changes now (see [`PointStore::ready`]).
    pub async fn ready(&self) -> Result<(), PointError> {
        Ok(self.store.ready().await?)
    }

    /// The user's history, oldest first.
    pub async fn histories(&self, id: UserId) -> Result<Vec<PointHistory>, PointError> {
        Ok(self.store.histories(id).await?)
    }

    /// Add `amount` to the balance of the user whose lock `held` is.
    ///
    /// The store keeps a clone of `held` until it has answered for the change,
    /// so the user stays locked until then even if this future is dropped.
    pub async fn charge(
        &self,
        held: &Arc<KeyGuard<UserId>>,
        amount: Amount,
    ) -> Result<UserPoint, PointError> {
        let applied = self
            .apply(held, TransactionType::Charge, amount, None)
            .await?;
        Ok(applied.point)
    }

    /// Take `amount` from the balance of the user whose lock `held` is.
    ///
    /// The store keeps a clone of `held` until it has answered for the change.
    pub async fn use_points(
        &self,
        held: &Arc<KeyGuard<UserId>>,
        amount: Amount,
    ) -> Result<UserPoint, PointError> {
        let applied = self.apply(held, TransactionType::Use, amount, None).await?;
        Ok(applied.point)
    }

    /// Charge or use `amount` for the user whose lock `held` is, at most once
    /// per idempotency `key` (see the [module docs](self)).
    ///
    /// Without a key this is [`charge`](Self::charge) or
    /// [`use_points`](Self::use_points). With one: a live record of the same
    /// request answers again, changing nothing (`replayed: true`); a live record
    /// of another request is [`PointError::IdempotencyKeyReused`]; otherwise
    /// the change applies and its record commits with it.
    ///
    /// The caller keeps `held`, so the user stays locked until the caller drops
    /// it: [`apply_owned`](Self::apply_owned) hands the guard over instead.
    pub async fn apply(
        &self,
        held: &Arc<KeyGuard<UserId>>,
        kind: TransactionType,
        amount: Amount,
        key: Option<&IdempotencyKey>,
    ) -> Result<Applied, PointError> {
        self.apply_owned(Arc::clone(held), kind, amount, key).await
    }

    /// [`apply`](Self::apply), taking the caller's guard: the service drops it
    /// as soon as the answer no longer needs the user locked, and then waits
    /// for the answer to be durable.
    ///
    /// On a pipelined store (see [`PointStore`]) that is once the change is
    /// **sequenced**: the user's next request runs on the sequenced state
    /// while this one waits for its fsync. An answer computed from sequenced
    /// state that is not durable yet (a refusal, a replay, a 422) is held back
    /// until that state is durable, and becomes the store's error if it never
    /// does. On any other store the change is durable when it is sequenced, so
    /// this is `apply` with the guard dropped at the end. The user is released
    /// early only if `held` is the last strong handle on the guard (the HTTP
    /// layer hands its own over).
    pub async fn apply_owned(
        &self,
        held: Arc<KeyGuard<UserId>>,
        kind: TransactionType,
        amount: Amount,
        key: Option<&IdempotencyKey>,
    ) -> Result<Applied, PointError> {
        if !held.is_from(&self.lock) {
            return Err(PointError::ForeignGuard);
        }
        let id = *held.key();
        // Read the clock for the key's TTL only when there is a key.
        let expired_before = key.map_or(i64::MIN, |_| self.key_expired_before());
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            // The mark of the first read of this attempt that showed state not
            // yet durable: every answer computed from it waits for that state.
            let mut mark = None;
            if let Some(key) = key {
                let read = self.store.sequenced_idempotency_record(id, key).await?;
                mark = read.mark;
                if let Some(answer) = recorded(read.value, id, kind, amount, expired_before) {
                    return self.answer_settled(held, id, mark, answer).await;
                }
            }
            let read = self.store.sequenced_point(id).await?;
            mark = mark.or(read.mark);
            let balance = read.value.map_or(0, |p| p.point);
            let decided = match kind {
                TransactionType::Charge => self.policy.charge(balance, amount),
                // A use never raises a balance: one above a maximum lowered since
                // it was reached may still be spent (and no charge is allowed).
                TransactionType::Use => self.policy.use_points(balance, amount),
            };
            let point = match decided {
                Ok(point) => point,
                Err(refused) => {
                    // A writer that bypassed the lock (another instance) may
                    // have committed this very request, under its key, between
                    // the lookup above and the balance read, and the refusal
                    // would then answer a request that has applied. Look
                    // again: a record now answers; none means there was none
                    // when the balance was read, and the refusal stands.
                    if let Some(key) = key {
                        let read = self.store.sequenced_idempotency_record(id, key).await?;
                        mark = mark.or(read.mark);
                        if let Some(answer) = recorded(read.value, id, kind, amount, expired_before)
                        {
                            return self.answer_settled(held, id, mark, answer).await;
                        }
                    }
                    return self.answer_settled(held, id, mark, Err(refused)).await;
                }
            };
            // Checked before writing; a store that disagrees is a broken invariant.
            debug_assert!(point <= self.policy.max_balance || point < balance);
            let mut change = Change::new(
                Arc::clone(&held),
                self.expected(balance),
                point,
                kind,
                amount,
                self.clock.now_millis(),
            )
            .with_read_mark(mark);
            if let Some(key) = key {
                change = change.with_key(key.clone(), self.key_condition(expired_before));
            }
            match self.store.sequence(change).await {
                Ok(pending) => {
                    // The change has its place in the store's order: the user's
                    // next request may compute on top of it (a pipelined store
                    // dropped the change's guard; this drops ours). The answer
                    // waits for the change to be durable.
                    drop(held);
                    return match pending.await {
                        Ok(committed) => {
                            debug_assert_eq!(committed.user_point.point, point);
                            debug_assert_eq!(committed.history.user_id, id);
                            Ok(Applied {
                                point: committed.user_point,
                                replayed: false,
                            })
                        }
                        Err(refused) => {
                            // Refused after the lock passed on (a writer that
                            // bypassed it, or an earlier change of the user
                            // that failed): nothing changed, and it is too late
                            // to retry under the lock.
                            if refused.is_conflict() {
                                self.conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(refused.into())
                        }
                    };
                }
                Err(refused) if refused.is_conflict() => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(failed) => return Err(failed.into()),
            }
        }
        Err(PointError::WriteConflict {
            attempts: COMMIT_ATTEMPTS_MAX,
        })
    }

    /// Release the user, then give `answer` once the state it was computed
    /// from (a read marked `mark`) is durable; the store's error instead if
    /// that state failed.
    async fn answer_settled(
        &self,
        held: Arc<KeyGuard<UserId>>,
        id: UserId,
        mark: Option<ReadMark>,
        answer: Result<Applied, PointError>,
    ) -> Result<Applied, PointError> {
        drop(held);
        if let Some(mark) = mark {
            self.store.settle(id, mark).await?;
        }
        if matches!(answer, Ok(Applied { replayed: true, .. })) {
            self.replays.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Records made at or before this moment have expired.
    fn key_expired_before(&self) -> i64 {
        self.clock
            .now_millis()
            .saturating_sub(self.idempotency_ttl_millis)
    }

    /// The key condition of a change: records made at or before this may be
    /// replaced. In the test-util negative controls every record may be (the
    /// condition switched off, like the balance's).
    fn key_condition(&self, expired_before: i64) -> i64 {
        #[cfg(any(test, feature = "test-util"))]
        if self.unconditional {
            return i64::MAX;
        }
        expired_before
    }

    /// The condition of a change computed from `balance`.
    fn expected(&self, balance: u64) -> Option<u64> {
        #[cfg(any(test, feature = "test-util"))]
        if self.unconditional {
            return None;
        }
        Some(balance)
    }
}

/// The answer a live record of `key` gives: the first answer again when it
/// recorded this request, [`PointError::IdempotencyKeyReused`] when another;
/// `None` without a live record.
fn recorded(
    found: Option<IdempotencyRecord>,
    id: UserId,
    kind: TransactionType,
    amount: Amount,
    expired_before: i64,
) -> Option<Result<Applied, PointError>> {
    let record = found.filter(|r| !r.is_expired(expired_before))?;
    if !record.matches(kind, amount) {
        return Some(Err(PointError::IdempotencyKeyReused {
            kind: record.kind.as_str(),
            amount: record.amount.get(),
        }));
    }
    Some(Ok(Applied {
        point: record.user_point(id),
        replayed: true,
    }))
}

/// `ttl` in whole milliseconds, saturating.
fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

// Not under loom: these tests use the lock outside a loom model (see lock/loom_tests.rs).
#[cfg(all(test, not(loom)))]
mod tests {
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
        assert_eq!(now(svc.charge(&held, amount(100))).unwrap().point, 100);
        clock.advance_millis(10);
        let after = now(svc.use_points(&held, amount(40))).unwrap();
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
            now(svc.charge(&held, amount(1))).unwrap();
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
        now(svc.charge(&held, amount(10_000))).unwrap();
        assert!(matches!(
            now(svc.charge(&held, amount(1))),
            Err(PointError::MaxBalanceExceeded { .. })
        ));
        assert!(matches!(
            now(svc.charge(&held, amount(u64::try_from(i64::MAX).unwrap()))),
            Err(PointError::MaxBalanceExceeded { .. })
        ));
        now(svc.use_points(&held, amount(10_000))).unwrap();
        assert_eq!(
            now(svc.use_points(&held, amount(1))),
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
        assert!(now(svc.charge(&held, max)).is_ok());
        assert!(now(svc.charge(&held, max)).is_ok());
        // 2 * (2^63 - 1) + 2^63 - 1 > u64::MAX: refused, not wrapped.
        assert!(matches!(
            now(svc.charge(&held, max)),
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
        now(before.charge(&held, amount(15_000))).unwrap();
        drop(held);

        let after = PointService::new(store, Policy::new(10_000), clock);
        let held = Arc::new(now(after.lock().lock(id(1))));
        assert_eq!(
            now(after.use_points(&held, amount(1_000))).unwrap().point,
            14_000
        );
        assert!(matches!(
            now(after.charge(&held, amount(1))),
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
        ) -> crate::BoxFuture<'_, Result<Option<crate::IdempotencyRecord>, crate::StoreError>>
        {
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
        assert_eq!(now(svc.charge(&held, amount(100))).unwrap().point, 102);
        assert_eq!(svc.commit_conflicts(), 2);
        assert_eq!(replays(&svc, 1), 102);
        // The policy is applied again to the new balance: a use of 102 fits.
        assert_eq!(now(svc.use_points(&held, amount(102))).unwrap().point, 0);
    }

    #[test]
    fn a_balance_that_keeps_changing_ends_in_a_retryable_conflict_that_changed_nothing() {
        let svc = meddled(u32::MAX);
        let held = Arc::new(now(svc.lock().lock(id(1))));
        assert_eq!(
            now(svc.charge(&held, amount(100))),
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
        assert_eq!(now(svc.charge(&held, amount(100))).unwrap().point, 100);
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
            now(svc.charge(&foreign, amount(1))),
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
        let first = now(svc.apply(&held, TransactionType::Charge, amount(100), Some(&k))).unwrap();
        assert!(!first.replayed);
        clock.advance_millis(50);
        let again = now(svc.apply(&held, TransactionType::Charge, amount(100), Some(&k))).unwrap();
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
        let theirs =
            now(svc.apply(&other, TransactionType::Charge, amount(100), Some(&k))).unwrap();
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
        now(svc.apply(&held, TransactionType::Charge, amount(100), Some(&k))).unwrap();
        for (kind, raw) in [(TransactionType::Use, 100), (TransactionType::Charge, 99)] {
            assert_eq!(
                now(svc.apply(&held, kind, amount(raw), Some(&k))),
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
            now(svc.apply(&held, TransactionType::Use, amount(50), Some(&k))),
            Err(PointError::InsufficientBalance { .. })
        ));
        now(svc.charge(&held, amount(80))).unwrap();
        let applied = now(svc.apply(&held, TransactionType::Use, amount(50), Some(&k))).unwrap();
        assert_eq!((applied.point.point, applied.replayed), (30, false));
    }

    #[test]
    fn a_key_expires_after_the_ttl_and_then_applies_again() {
        let (svc, clock) = service();
        let svc = svc.with_idempotency_ttl(std::time::Duration::from_millis(1_000));
        let held = Arc::new(now(svc.lock().lock(id(1))));
        let k = key("k");
        now(svc.apply(&held, TransactionType::Charge, amount(10), Some(&k))).unwrap();
        clock.advance_millis(999);
        assert!(
            now(svc.apply(&held, TransactionType::Charge, amount(10), Some(&k)))
                .unwrap()
                .replayed
        );
        // Expired: the key is free, even for another request, and the new record
        // replaces the old one.
        clock.advance_millis(1);
        let fresh = now(svc.apply(&held, TransactionType::Use, amount(5), Some(&k))).unwrap();
        assert_eq!((fresh.point.point, fresh.replayed), (5, false));
        assert!(
            now(svc.apply(&held, TransactionType::Use, amount(5), Some(&k)))
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
            now(svc.apply(&held, TransactionType::Charge, amount(1), Some(&key("a")))).unwrap();
        }
        clock.advance_millis(10);
        // User 1's key expired and was used again: the new record must survive.
        let held = Arc::new(now(svc.lock().lock(id(1))));
        now(svc.apply(&held, TransactionType::Charge, amount(2), Some(&key("a")))).unwrap();
        assert_eq!(now(svc.sweep_idempotency(3)).unwrap(), 3);
        assert_eq!(now(svc.sweep_idempotency(3)).unwrap(), 1);
        assert_eq!(now(svc.sweep_idempotency(3)).unwrap(), 0);
        assert!(
            now(svc.apply(&held, TransactionType::Charge, amount(2), Some(&key("a"))))
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
        let answer = now(svc.apply(&held, TransactionType::Charge, amount(100), Some(&key("k"))));
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
                now(svc.charge(&held, amount(opening))).unwrap();
            }
            *twin.lock().unwrap() = Some((kind, raw, "k"));
            let answer = now(svc.apply(&held, kind, amount(raw), Some(&key("k"))));
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
}
