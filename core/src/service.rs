//! [`PointService`]: the wallet's operations, policies applied, under the user's lock.
//!
//! Reads ([`point`](PointService::point), [`histories`](PointService::histories))
//! need no lock; with the user's guard ([`point_in_order`](PointService::point_in_order),
//! [`histories_page_in_order`](PointService::histories_page_in_order)) they show every
//! change that took the lock before them. Mutations ([`charge`](PointService::charge),
//! [`use_points`](PointService::use_points)) take a [`KeyGuard`] of the service's
//! own [`KeyedLock`] as proof that the caller holds that user's lock: the user id
//! comes from the guard, so a mutation for user 1 cannot run under user 2's lock, and
//! there is no way to call one without holding the lock.
//!
//! # Two lines of defence
//!
//! 1. **The lock** (the caller's): one request of a user at a time, in arrival
//!    order. The read, the policy check and the commit all happen under it.
//! 2. **The store's [condition](PointStore#the-condition)**: each [`Change`]
//!    carries the balance it was computed from. If the store refuses it
//!    (something bypassed the lock: another process on the same database), the
//!    service reads the balance again, applies the policy again and retries, at
//!    most [`COMMIT_ATTEMPTS_MAX`] times in all; past that it answers
//!    [`PointError::WriteConflict`] (retryable; nothing changed). With the lock in
//!    front the condition never fails.
//!
//! Over a [`DecidingStore`](crate::store::DecidingStore) (chosen by
//! [`PointStore::deciding`]: the PostgreSQL store) the second line is the
//! store's own decision instead: under the lock the service only places the
//! mutation in the store's order, as a [`Request`](crate::store::Request), and
//! the store decides it with the same policy on the user's state at that
//! place, inside the database, whatever other processes wrote before. Nothing
//! is refused for contention there, so nothing is retried.
//!
//! # The guard
//!
//! A mutation takes the caller's guard (an `Arc`), and a clone of it
//! [travels with the change](PointStore#the-guard-travels-with-the-change)
//! into the store: dropping the mutation's future mid-commit does not release
//! the user while the change may still be applied. Over a plain store the user
//! is released once the change is durable. Over a [`PipelinedStore`](crate::store::PipelinedStore) (chosen by
//! [`PointStore::pipelined`]) the service computes on the sequenced state and
//! the user is released once the change is sequenced; every answer computed
//! from state not yet durable waits until it is (see the store's promises).
//! A caller that keeps a clone of the guard keeps the user locked until it
//! drops it: the answers are the same, only the early release is lost.
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
use crate::store::{Change, PointStore};

mod decided;
mod history;
mod writes;

pub use history::{HistoriesPage, HistoryPage};
use writes::{Basis, Outcome, Writes};

/// The most commits one mutation attempts before it answers
/// [`PointError::WriteConflict`]: the first, and re-reads after refused ones.
/// Bounded so that a user whose balance changes without pause (a lock bypassed on
/// purpose, processes sharing a store that checks conditions) costs each request
/// a few round trips, never an unbounded loop. (A deciding store refuses
/// nothing for contention: nothing to retry.)
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
    /// Wall and monotonic readings when the service was made: the age of an
    /// idempotency record is measured on the monotonic clock from here
    /// ([`PointService::ttl_now`]).
    started: (i64, u64),
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
        let started = (clock.now_millis(), clock.monotonic_nanos());
        Self {
            store,
            lock,
            policy,
            clock,
            conflicts: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            swept: AtomicU64::new(0),
            idempotency_ttl_millis: ttl_millis(IDEMPOTENCY_TTL_DEFAULT),
            started,
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

    /// The user's balance at this request's place in the user's order: `held`
    /// is a guard of the user's lock, taken in arrival order, and the answer
    /// shows every change of the user that took the lock before it, durable.
    ///
    /// Over a plain store that is a read under the guard (each change held
    /// the user until it was durable). Over a pipelined store the guard is
    /// released as soon as the store has shown where the user's sequenced
    /// state stands; the read then waits until every change sequenced before
    /// it has been decided (applied and durable, or failed) and reads durable
    /// state. A read never waits behind changes that come after it.
    pub async fn point_in_order(
        &self,
        held: Arc<KeyGuard<UserId>>,
    ) -> Result<UserPoint, PointError> {
        let id = *held.key();
        let held = self.after_earlier_changes(held).await?;
        let point = self.point(id).await;
        drop(held);
        point
    }

    /// Wait until durable state shows every change of the user sequenced
    /// before `held` was granted. Over a plain store that is already so, and
    /// the guard is handed back to be held during the read; over a pipelined
    /// store the guard is dropped first (`None`).
    async fn after_earlier_changes(
        &self,
        held: Arc<KeyGuard<UserId>>,
    ) -> Result<Option<Arc<KeyGuard<UserId>>>, PointError> {
        if !held.is_from(&self.lock) {
            return Err(PointError::ForeignGuard);
        }
        if let Some(store) = self.store.deciding() {
            // Placed behind every earlier request, under the guard; then
            // waited for without it.
            let placed = store.barrier(*held.key()).await?;
            drop(held);
            // Decided either way is enough (as below).
            let _ = placed.await;
            return Ok(None);
        }
        let store = Writes::of(&self.store);
        if matches!(store, Writes::Commit(_)) {
            return Ok(Some(held));
        }
        let mut basis = Basis::new();
        basis.value_of(store.point(*held.key()).await?);
        drop(held);
        // Decided either way is enough: a change that failed is not in the
        // durable state the read then shows.
        let _ = basis.settled().await;
        Ok(None)
    }

    /// Whether the store can take changes now (see [`PointStore::ready`]).
    pub async fn ready(&self) -> Result<(), PointError> {
        Ok(self.store.ready().await?)
    }

    /// The user's history, oldest first.
    pub async fn histories(&self, id: UserId) -> Result<Vec<PointHistory>, PointError> {
        Ok(self.store.histories(id).await?)
    }

    /// Add `amount` to the balance of the user whose lock `held` is
    /// ([`apply`](Self::apply) without a key).
    pub async fn charge(
        &self,
        held: Arc<KeyGuard<UserId>>,
        amount: Amount,
    ) -> Result<UserPoint, PointError> {
        let applied = self
            .apply(held, TransactionType::Charge, amount, None)
            .await?;
        Ok(applied.point)
    }

    /// Take `amount` from the balance of the user whose lock `held` is
    /// ([`apply`](Self::apply) without a key).
    pub async fn use_points(
        &self,
        held: Arc<KeyGuard<UserId>>,
        amount: Amount,
    ) -> Result<UserPoint, PointError> {
        let applied = self.apply(held, TransactionType::Use, amount, None).await?;
        Ok(applied.point)
    }

    /// Charge or use `amount` for the user whose lock `held` is, at most once
    /// per idempotency `key` (see the [module docs](self)).
    ///
    /// Without a key the change applies if the policy allows it. With one: a
    /// live record of the same request answers again, changing nothing
    /// (`replayed: true`); a live record of another request is
    /// [`PointError::IdempotencyKeyReused`]; otherwise the change applies and
    /// its record commits with it.
    ///
    /// The service takes the caller's guard and drops it as soon as the answer
    /// no longer needs the user locked (see [the guard](self#the-guard)), then
    /// answers once everything the answer shows is durable. The user is
    /// released early only if `held` is the last handle on the guard (the HTTP
    /// layer hands its own over); a caller that keeps a clone keeps the user
    /// locked until it drops it.
    pub async fn apply(
        &self,
        held: Arc<KeyGuard<UserId>>,
        kind: TransactionType,
        amount: Amount,
        key: Option<&IdempotencyKey>,
    ) -> Result<Applied, PointError> {
        if !held.is_from(&self.lock) {
            return Err(PointError::ForeignGuard);
        }
        if let Some(store) = self.store.deciding() {
            return self.apply_decided(store, held, kind, amount, key).await;
        }
        let id = *held.key();
        let store = Writes::of(&self.store);
        // Read the clock for the key's TTL only when there is a key.
        let expired_before = key.map_or(i64::MIN, |_| self.key_expired_before());
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            let mut basis = Basis::new();
            if let Some(key) = key {
                let found = basis.value_of(store.record(id, key).await?);
                if let Some(answer) = recorded(found, id, kind, amount, expired_before) {
                    return self.answer_settled(held, basis, answer).await;
                }
            }
            let balance = basis
                .value_of(store.point(id).await?)
                .map_or(0, |p| p.point);
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
                        let found = basis.value_of(store.record(id, key).await?);
                        if let Some(answer) = recorded(found, id, kind, amount, expired_before) {
                            return self.answer_settled(held, basis, answer).await;
                        }
                    }
                    return self.answer_settled(held, basis, Err(refused)).await;
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
            .with_read_mark(basis.mark());
            if let Some(key) = key {
                change = change.with_key(key.clone(), self.key_condition(expired_before));
            }
            let committed = match store.apply(change).await {
                Ok(Outcome::Done(committed)) => Ok(committed),
                Ok(Outcome::Pending(pending)) => {
                    // The change has its place in the store's order: the
                    // user's next request may compute on top of it (the store
                    // dropped the change's guard; this drops ours). The answer
                    // waits for the change to be durable, and fails if
                    // anything it was computed on failed.
                    drop(held);
                    pending.await
                }
                Err(refused) if refused.is_conflict() => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(failed) => return Err(failed.into()),
            };
            return match committed {
                Ok(committed) => {
                    debug_assert_eq!(committed.user_point.point, point);
                    debug_assert_eq!(committed.history.user_id, id);
                    Ok(Applied {
                        point: committed.user_point,
                        replayed: false,
                    })
                }
                Err(refused) => {
                    // Refused after the lock passed on (a writer that bypassed
                    // it, or an earlier change of the user that failed):
                    // nothing changed, and it is too late to retry under the
                    // lock.
                    if refused.is_conflict() {
                        self.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(refused.into())
                }
            };
        }
        Err(PointError::WriteConflict {
            attempts: COMMIT_ATTEMPTS_MAX,
        })
    }

    /// Release the user, then give `answer` once the state it was computed
    /// from (`basis`) is durable; the store's error instead if that state
    /// failed.
    async fn answer_settled(
        &self,
        held: Arc<KeyGuard<UserId>>,
        basis: Basis<'_>,
        answer: Result<Applied, PointError>,
    ) -> Result<Applied, PointError> {
        drop(held);
        basis.settled().await?;
        if matches!(answer, Ok(Applied { replayed: true, .. })) {
            self.replays.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Records made at or before this moment have expired.
    fn key_expired_before(&self) -> i64 {
        self.ttl_now().saturating_sub(self.idempotency_ttl_millis)
    }

    /// "Now" for idempotency expiry: the wall clock, but never ahead of the
    /// wall time at start plus the monotonic time elapsed since. A wall clock
    /// stepped forward (by hand, by NTP) cannot age a record faster than real
    /// time, so it cannot free a live key; stepped back, records live longer,
    /// never shorter. A step while the process was not running is seen as
    /// time that passed (documented in the idempotency module).
    fn ttl_now(&self) -> i64 {
        let (wall_at_start, mono_at_start) = self.started;
        let elapsed_nanos = self.clock.monotonic_nanos().saturating_sub(mono_at_start);
        let elapsed = i64::try_from(elapsed_nanos / 1_000_000).unwrap_or(i64::MAX);
        self.clock
            .now_millis()
            .min(wall_at_start.saturating_add(elapsed))
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

/// The answer a live record of `key` gives ([`answer_from`]); `None` without
/// a live record.
fn recorded(
    found: Option<IdempotencyRecord>,
    id: UserId,
    kind: TransactionType,
    amount: Amount,
    expired_before: i64,
) -> Option<Result<Applied, PointError>> {
    let record = found.filter(|r| !r.is_expired(expired_before))?;
    Some(answer_from(record, id, kind, amount))
}

/// The answer a live `record` of the request's key gives: the first answer
/// again when it recorded this request, [`PointError::IdempotencyKeyReused`]
/// when another.
fn answer_from(
    record: IdempotencyRecord,
    id: UserId,
    kind: TransactionType,
    amount: Amount,
) -> Result<Applied, PointError> {
    if !record.matches(kind, amount) {
        return Err(PointError::IdempotencyKeyReused {
            kind: record.kind.as_str(),
            amount: record.amount.get(),
        });
    }
    Ok(Applied {
        point: record.user_point(id),
        replayed: true,
    })
}

/// `ttl` in whole milliseconds, saturating.
fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

// Not under loom: these tests use the lock outside a loom model (see lock/loom_tests.rs).
#[cfg(all(test, not(loom)))]
mod pipelined_tests;
#[cfg(all(test, not(loom)))]
mod tests;
