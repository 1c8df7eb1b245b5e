//! [`DecidingStore`]: a store that decides each request itself, at its place
//! in the user's order, with the core policy; and [`Request`] and [`Decided`],
//! what it takes and answers.

use std::sync::Arc;

use crate::domain::{Amount, TransactionType, UserId, UserPoint};
use crate::error::{PointError, StoreError};
use crate::idempotency::{IdempotencyKey, IdempotencyRecord};
use crate::lock::KeyGuard;
use crate::policy::Policy;
use crate::store::{BoxFuture, Committed, PointStore};

/// A store that takes **requests** rather than computed changes, and decides
/// each one itself, with the core [`Policy`] ([`Request::decide`]), on the
/// user's state as it stands when the request's turn comes: for a shared
/// database, on the row it holds locked at that moment. Whatever other
/// processes wrote before, a request is decided on their result, so
/// contention between processes is never an error; it only orders.
///
/// A deciding store is a [`PointStore`] too (its
/// [`commit`](PointStore::commit) keeps every promise of a plain store), and
/// says so with [`PointStore::deciding`]: the
/// [`PointService`](crate::PointService) then hands it each mutation as a
/// [`Request`] under the user's lock, instead of reading and computing.
///
/// # The promises
///
/// 1. **Order.** [`submit`](Self::submit) resolves once the request has its
///    place in the user's order; the store decides a user's requests in that
///    order, each on the state the ones before it left (in this process and
///    in every other one writing the same user), and a request once placed is
///    decided whatever happens to its caller. An `Err` of `submit` placed
///    nothing and changed nothing (a full queue, a closed store).
/// 2. **The guard.** A request carries its user's guard. The store may
///    release it once the request is placed ([`Request::release_guard`]),
///    since the order is fixed from there; otherwise it keeps it until it has
///    answered.
/// 3. **Decided with the core policy, atomically.** The balance, the history
///    row and the idempotency record of an applied request commit together or
///    not at all; the decision is [`Request::decide`] on the state at its
///    place, so the answer is the one a lone process would have given there.
/// 4. **Durable before answered.** The [`Decision`] resolves once what it
///    shows is durable: an applied request once committed, a refusal or a
///    recorded answer once the state it was decided on is.
/// 5. **Barriers.** [`barrier`](Self::barrier) places a marker in the
///    user's order and resolves once every request placed before it has been
///    answered: a read made then shows all of them, durable.
pub trait DecidingStore: PointStore {
    /// Place `request` in its user's order (promise 1), then decide it there
    /// (promises 3 and 4): the outer future resolves once it is placed, the
    /// [`Decision`] once it is decided and durable.
    fn submit(&self, request: Request) -> BoxFuture<'_, Result<Decision<'_>, StoreError>>;

    /// Place a barrier in user `id`'s order (the outer future, once placed);
    /// the inner future resolves once every request placed before it has been
    /// answered (promise 5).
    fn barrier(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<BoxFuture<'_, Result<(), StoreError>>, StoreError>>;
}

/// The decision on a placed request, to await (see [`DecidingStore::submit`]).
pub type Decision<'a> = BoxFuture<'a, Result<Decided, StoreError>>;

/// What a deciding store decided for a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Applied: the rows it wrote (the history id assigned by the store).
    Applied(Committed),
    /// Refused by the policy on the balance at its place; nothing changed.
    Refused(PointError),
    /// The key had a live record: nothing applied; the service answers from
    /// the record (the first answer again, or the key reused for another
    /// request).
    Recorded(IdempotencyRecord),
}

/// A mutation for a [`DecidingStore`] to decide: what the client asked for,
/// the policy to decide it with, and the user's guard. Only the service makes
/// one (outside the `test-util` feature).
pub struct Request {
    held: Option<Arc<KeyGuard<UserId>>>,
    user: UserId,
    kind: TransactionType,
    amount: Amount,
    time_millis: i64,
    policy: Policy,
    keyed: Option<(IdempotencyKey, i64)>,
    /// Test-util negative controls only: decide on this balance, read before
    /// the request's turn, instead of the state at its place.
    #[cfg(any(test, feature = "test-util"))]
    stale_basis: Option<u64>,
}

impl Request {
    /// A request of the user whose lock `held` is (the service checked the lock).
    pub(crate) fn new(
        held: Arc<KeyGuard<UserId>>,
        kind: TransactionType,
        amount: Amount,
        time_millis: i64,
        policy: Policy,
    ) -> Self {
        Self {
            user: *held.key(),
            held: Some(held),
            kind,
            amount,
            time_millis,
            policy,
            keyed: None,
            #[cfg(any(test, feature = "test-util"))]
            stale_basis: None,
        }
    }

    /// A request for store tests and benchmarks. Only with the `test-util`
    /// feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests(
        held: Arc<KeyGuard<UserId>>,
        kind: TransactionType,
        amount: Amount,
        time_millis: i64,
        policy: Policy,
    ) -> Self {
        Self::new(held, kind, amount, time_millis, policy)
    }

    /// The same request made with `key`: a live record of the key (one made
    /// after `expired_before`) answers it instead; if it applies, its record
    /// commits with it.
    pub fn with_key(mut self, key: IdempotencyKey, expired_before: i64) -> Self {
        self.keyed = Some((key, expired_before));
        self
    }

    /// The negative control of a deciding store: decide on `balance` (read
    /// before the request's turn) instead of the state at its place, the lost
    /// update the store's decision prevents. Only with the `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_stale_basis(mut self, balance: u64) -> Self {
        self.stale_basis = Some(balance);
        self
    }

    /// Release the user's guard: the request has its place in the order
    /// ([`DecidingStore`] promise 2).
    pub fn release_guard(&mut self) {
        self.held = None;
    }

    /// Whose request this is (the key of the guard it carries).
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// Charge or use.
    pub fn kind(&self) -> TransactionType {
        self.kind
    }

    /// The amount asked for.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// When the request was made: `updateMillis` and `timeMillis` if it applies.
    pub fn time_millis(&self) -> i64 {
        self.time_millis
    }

    /// The idempotency key, if any.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.keyed.as_ref().map(|(key, _)| key)
    }

    /// Records of the key made at or before this have expired (meaningless
    /// without a key).
    pub fn key_expired_before(&self) -> i64 {
        self.keyed.as_ref().map_or(i64::MIN, |(_, before)| *before)
    }

    /// The decision on this request at its place, where the user's balance is
    /// `stored` (`None`: never charged) and `record` is the user's record of
    /// the request's key, expired or not (ignored without a key). For an
    /// applied request the history id is 0: the store assigns it.
    ///
    /// A live record answers ([`Decided::Recorded`]); otherwise the policy
    /// decides, exactly as the service decides over any other store.
    pub fn decide(
        &self,
        stored: Option<&UserPoint>,
        record: Option<&IdempotencyRecord>,
    ) -> Decided {
        if let Some((_, expired_before)) = &self.keyed {
            if let Some(record) = record.filter(|r| !r.is_expired(*expired_before)) {
                return Decided::Recorded(record.clone());
            }
        }
        let balance = stored.map_or(0, |p| p.point);
        #[cfg(any(test, feature = "test-util"))]
        let balance = self.stale_basis.unwrap_or(balance);
        let decided = match self.kind {
            TransactionType::Charge => self.policy.charge(balance, self.amount),
            // A use never raises a balance (see the service).
            TransactionType::Use => self.policy.use_points(balance, self.amount),
        };
        match decided {
            Ok(point) => Decided::Applied(self.committed(point, 0)),
            Err(refused) => Decided::Refused(refused),
        }
    }

    /// The rows an applied request writes: balance `point`, history id `history_id`.
    pub fn committed(&self, point: u64, history_id: u64) -> Committed {
        Committed::of(
            self.user,
            point,
            (self.kind, self.amount),
            self.time_millis,
            history_id,
        )
    }

    /// The record an applied request writes, leaving balance `point`, if it
    /// was made with a key.
    pub fn record(&self, point: u64) -> Option<IdempotencyRecord> {
        self.keyed.as_ref().map(|(key, _)| IdempotencyRecord {
            key: key.clone(),
            kind: self.kind,
            amount: self.amount,
            point,
            time_millis: self.time_millis,
        })
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("user_id", &self.user)
            .field("kind", &self.kind)
            .field("amount", &self.amount)
            .field("time_millis", &self.time_millis)
            .field("idempotency_key", &self.idempotency_key())
            .field("holds_guard", &self.held.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::KeyedLock;

    fn request(kind: TransactionType, amount: u64) -> Request {
        let lock = KeyedLock::new();
        let id = UserId::new(1).unwrap();
        let held = Arc::new(lock.try_lock(id).unwrap());
        Request::new(
            held,
            kind,
            Amount::new(amount).unwrap(),
            5,
            Policy::new(100),
        )
    }

    fn at(point: u64) -> UserPoint {
        UserPoint {
            id: UserId::new(1).unwrap(),
            point,
            update_millis: 1,
        }
    }

    #[test]
    fn the_policy_decides_on_the_state_at_its_place() {
        let charge = request(TransactionType::Charge, 30);
        match charge.decide(Some(&at(50)), None) {
            Decided::Applied(c) => {
                assert_eq!((c.user_point.point, c.user_point.update_millis), (80, 5))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(charge.decide(None, None), Decided::Applied(c) if c.user_point.point == 30)
        );
        assert!(matches!(
            charge.decide(Some(&at(80)), None),
            Decided::Refused(PointError::MaxBalanceExceeded { .. })
        ));
        let use_ = request(TransactionType::Use, 30);
        assert!(matches!(
            use_.decide(Some(&at(20)), None),
            Decided::Refused(PointError::InsufficientBalance {
                balance: 20,
                amount: 30
            })
        ));
    }

    #[test]
    fn a_live_record_answers_an_expired_one_does_not() {
        let key = IdempotencyKey::new("k").unwrap();
        let keyed = request(TransactionType::Charge, 10).with_key(key.clone(), 3);
        let record = |time_millis| IdempotencyRecord {
            key: key.clone(),
            kind: TransactionType::Use,
            amount: Amount::new(7).unwrap(),
            point: 9,
            time_millis,
        };
        assert_eq!(
            keyed.decide(Some(&at(0)), Some(&record(4))),
            Decided::Recorded(record(4))
        );
        assert!(matches!(
            keyed.decide(Some(&at(0)), Some(&record(3))),
            Decided::Applied(_)
        ));
        assert_eq!(keyed.record(10).map(|r| r.point), Some(10));
        // Without a key a record means nothing.
        assert!(matches!(
            request(TransactionType::Charge, 10).decide(None, Some(&record(4))),
            Decided::Applied(_)
        ));
    }
}
