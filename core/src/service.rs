//! [`PointService`]: the wallet's operations, policies applied, under the user's lock.
//!
//! Reads ([`point`](PointService::point), [`histories`](PointService::histories))
//! need no lock. Mutations ([`charge`](PointService::charge),
//! [`use_points`](PointService::use_points)) take a [`KeyGuard`] of the service's
//! own [`KeyedLock`] as proof that the caller holds that user's lock: the user id
//! comes from the guard, so a mutation for user 1 cannot run under user 2's lock, and
//! there is no way to call one without holding the lock.
//!
//! The guard must stay alive until the returned future completes: the read, the
//! policy check and the atomic commit all happen under it, so no other mutation of
//! the same user can interleave (no lost update).

use std::sync::Arc;

use crate::clock::Clock;
use crate::domain::{Amount, PointHistory, TransactionType, UserId, UserPoint};
use crate::error::PointError;
use crate::lock::{KeyGuard, KeyedLock};
use crate::policy::Policy;
use crate::store::{Change, PointStore};

/// The point wallet. Cheap to share behind an `Arc`.
pub struct PointService<S> {
    store: S,
    lock: KeyedLock<UserId>,
    policy: Policy,
    clock: Arc<dyn Clock>,
}

impl<S: PointStore> PointService<S> {
    /// A service over `store` with its own lock (measuring waits with `clock`).
    pub fn new(store: S, policy: Policy, clock: Arc<dyn Clock>) -> Self {
        let lock = KeyedLock::with_clock(Arc::clone(&clock));
        Self::with_lock(store, policy, clock, lock)
    }

    /// A service using `lock` for its users: share it with an HTTP layer, or pass
    /// [`KeyedLock::unsynchronized`] for a negative control.
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
        }
    }

    /// The per-user lock whose guards the mutations demand.
    pub fn lock(&self) -> &KeyedLock<UserId> {
        &self.lock
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
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

    /// The user's history, oldest first.
    pub async fn histories(&self, id: UserId) -> Result<Vec<PointHistory>, PointError> {
        Ok(self.store.histories(id).await?)
    }

    /// Add `amount` to the balance of the user whose lock `held` is.
    pub async fn charge(
        &self,
        held: &KeyGuard<UserId>,
        amount: Amount,
    ) -> Result<UserPoint, PointError> {
        self.mutate(held, TransactionType::Charge, amount).await
    }

    /// Take `amount` from the balance of the user whose lock `held` is.
    pub async fn use_points(
        &self,
        held: &KeyGuard<UserId>,
        amount: Amount,
    ) -> Result<UserPoint, PointError> {
        self.mutate(held, TransactionType::Use, amount).await
    }

    async fn mutate(
        &self,
        held: &KeyGuard<UserId>,
        kind: TransactionType,
        amount: Amount,
    ) -> Result<UserPoint, PointError> {
        if !held.is_from(&self.lock) {
            return Err(PointError::ForeignGuard);
        }
        let id = *held.key();
        let balance = self.store.user_point(id).await?.map_or(0, |p| p.point);
        let point = match kind {
            TransactionType::Charge => self.policy.charge(balance, amount)?,
            TransactionType::Use => self.policy.use_points(balance, amount)?,
        };
        // Checked before writing; a store that disagrees is a broken invariant.
        debug_assert!(point <= self.policy.max_balance);
        let change = Change {
            user_id: id,
            point,
            kind,
            amount,
            time_millis: self.clock.now_millis(),
        };
        let committed = self.store.commit(change).await?;
        debug_assert_eq!(committed.user_point.point, point);
        debug_assert_eq!(committed.history.user_id, id);
        Ok(committed.user_point)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::clock::ManualClock;
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
        let held = now(svc.lock().lock(id(1)));
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
            let held = now(svc.lock().lock(id(user)));
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
        let held = now(svc.lock().lock(id(1)));
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
        let held = now(svc.lock().lock(id(1)));
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
        let held = now(before.lock().lock(id(1)));
        now(before.charge(&held, amount(15_000))).unwrap();
        drop(held);

        let after = PointService::new(store, Policy::new(10_000), clock);
        let held = now(after.lock().lock(id(1)));
        assert_eq!(now(after.use_points(&held, amount(1_000))).unwrap().point, 14_000);
        assert!(matches!(
            now(after.charge(&held, amount(1))),
            Err(PointError::MaxBalanceExceeded { balance: 14_000, .. })
        ));
        drop(held);
        assert_eq!(now(after.point(id(1))).unwrap().point, 14_000);
    }

    #[test]
    fn a_guard_of_another_lock_is_refused() {
        let (svc, _) = service();
        let other: KeyedLock<UserId> = KeyedLock::new();
        let foreign = now(other.lock(id(1)));
        assert_eq!(
            now(svc.charge(&foreign, amount(1))),
            Err(PointError::ForeignGuard)
        );
        assert!(now(svc.histories(id(1))).unwrap().is_empty());
    }
}
