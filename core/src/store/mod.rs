//! Where balances and histories live.
//!
//! A [`PointStore`] reads balances and histories and commits one change at a time
//! **atomically** and **conditionally**: the new balance and its history row are
//! written together or not at all, and only if the stored balance is still the one
//! the change was computed from. The store does not check policies or order a
//! user's requests: the [`PointService`](crate::PointService) does that, under the
//! user's lock. The condition is the second line of defence: it holds even where
//! the lock does not (see [`Change`]).

pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Amount, PointHistory, TransactionType, UserId, UserPoint};
use crate::error::StoreError;
use crate::idempotency::{IdempotencyKey, IdempotencyRecord};
use crate::lock::KeyGuard;
use crate::sync::{MaybeSend, MaybeSync};

/// A boxed store future: `Send` on native targets, not on wasm32 (see [`MaybeSend`]).
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed store future: `Send` on native targets, not on wasm32 (see [`MaybeSend`]).
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// An injected sleep: the memory store's simulated latency waits through it.
pub type Sleeper = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// One change to commit: the user's new balance, the history row explaining it,
/// the balance it was computed from, and the user's lock.
///
/// Only [`PointService`](crate::PointService) makes changes, from a guard of its
/// own lock: no public constructor exists (outside the `test-util` feature), so
/// nothing outside the service can commit a change without holding that user's
/// lock.
///
/// **The condition.** A store applies a change only if the user's stored balance
/// still equals [`expected_point`](Change::expected_point) (a user with no row
/// counts as 0), atomically with the write; otherwise it refuses it with a
/// [`StoreError::conflict`] that changes nothing. With the lock in front this
/// never fires; it is what keeps a stale change from overwriting a newer balance
/// when something bypasses the lock (another process on the same database, or a
/// guard released too early).
///
/// **The guard travels with the change.** A store keeps the change, and so the
/// user's lock, until it has answered for it (committed or refused), whatever
/// happens to the caller's future in the meantime: a store that keeps working on
/// a change after its caller stopped waiting (a writer thread, a database round
/// trip) must hold the change until then, so the next request of that user
/// cannot read the balance before this change is settled.
///
/// **An idempotency record may travel with it.** A change made with an
/// [`IdempotencyKey`] ([`Change::idempotency_key`]) writes its
/// [`record`](Change::idempotency_record) in the same commit, under a second
/// condition: the user may have no record for that key, or only an expired one
/// (made at or before [`key_expired_before`](Change::key_expired_before)), which
/// the new record replaces. A live record for the key refuses the whole change
/// as a conflict, changing nothing; the service then finds the record and
/// answers from it. So a key applies at most once even when two processes
/// commit it at the same moment.
#[derive(Clone)]
pub struct Change {
    /// The user's guard, until a pipelined store releases it at sequencing
    /// ([`Change::release_guard`]).
    held: Option<Arc<KeyGuard<UserId>>>,
    user: UserId,
    /// Where the sequenced state stood when the change was computed from it
    /// (a pipelined store's read); `None` for a durable read.
    read_mark: Option<ReadMark>,
    /// `None` only in the test-util negative controls: apply unconditionally.
    expected_point: Option<u64>,
    point: u64,
    kind: TransactionType,
    amount: Amount,
    time_millis: i64,
    keyed: Option<Keyed>,
}

/// The idempotency part of a change.
#[derive(Clone)]
struct Keyed {
    key: IdempotencyKey,
    expired_before: i64,
}

impl Change {
    /// A change of the user whose lock `held` is (the service checked the lock).
    pub(crate) fn new(
        held: Arc<KeyGuard<UserId>>,
        expected_point: Option<u64>,
        point: u64,
        kind: TransactionType,
        amount: Amount,
        time_millis: i64,
    ) -> Self {
        Self {
            user: *held.key(),
            held: Some(held),
            read_mark: None,
            expected_point,
            point,
            kind,
            amount,
            time_millis,
            keyed: None,
        }
    }

    /// The same change, computed from a read of a pipelined store's sequenced
    /// state that stood at `mark` (see [`PointStore::sequence`]).
    pub(crate) fn with_read_mark(mut self, mark: Option<ReadMark>) -> Self {
        self.read_mark = mark;
        self
    }

    /// Where the pipelined store's sequenced state stood when this change was
    /// computed from it (`None`: computed from durable state).
    pub fn read_mark(&self) -> Option<ReadMark> {
        self.read_mark
    }

    /// Whether the change still carries its user's guard (see
    /// [`release_guard`](Self::release_guard)).
    pub fn holds_guard(&self) -> bool {
        self.held.is_some()
    }

    /// Drop the user's guard this change carries: only a **pipelined** store
    /// does this, once the change has its place in the store's order and its
    /// result is the user's sequenced state (see [`PointStore::sequence`]).
    /// Every other store keeps the guard until it has answered for the change.
    pub fn release_guard(&mut self) {
        self.held = None;
    }

    /// The same change, made with `key`: it writes the key's record too, if the
    /// user has none for `key` made after `expired_before`.
    pub(crate) fn with_key(mut self, key: IdempotencyKey, expired_before: i64) -> Self {
        self.keyed = Some(Keyed {
            key,
            expired_before,
        });
        self
    }

    /// [`Change::for_tests`] made with an idempotency key. Only with the
    /// `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_key_for_tests(self, key: IdempotencyKey, expired_before: i64) -> Self {
        self.with_key(key, expired_before)
    }

    /// A change for store tests and benchmarks, which commit without a service.
    ///
    /// `expected_point: None` makes the change unconditional: the negative control
    /// that shows what the condition prevents. Only with the `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests(
        held: Arc<KeyGuard<UserId>>,
        expected_point: Option<u64>,
        point: u64,
        kind: TransactionType,
        amount: Amount,
        time_millis: i64,
    ) -> Self {
        Self::new(held, expected_point, point, kind, amount, time_millis)
    }

    /// Whose balance changes (the key of the guard the change carries).
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// The stored balance this change was computed from: the store applies the
    /// change only if the balance is still this (an absent user counts as 0).
    /// `None` (test-util negative controls only): apply unconditionally.
    pub fn expected_point(&self) -> Option<u64> {
        self.expected_point
    }

    /// The balance after the change (already checked against the policy).
    pub fn point(&self) -> u64 {
        self.point
    }

    /// Charge or use.
    pub fn kind(&self) -> TransactionType {
        self.kind
    }

    /// The amount charged or used.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// When the change is made: both `updateMillis` and `timeMillis`.
    pub fn time_millis(&self) -> i64 {
        self.time_millis
    }

    /// The idempotency key the change was made with, if any: the store writes
    /// [`idempotency_record`](Self::idempotency_record) in the same commit.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.keyed.as_ref().map(|keyed| &keyed.key)
    }

    /// A record of the change's key made at or before this time has expired and
    /// may be replaced; a later one refuses the change (see [`Change`]).
    /// Meaningless without a key.
    pub fn key_expired_before(&self) -> i64 {
        self.keyed
            .as_ref()
            .map_or(i64::MIN, |keyed| keyed.expired_before)
    }

    /// The record to write with the change, if it was made with a key.
    pub fn idempotency_record(&self) -> Option<IdempotencyRecord> {
        self.keyed.as_ref().map(|keyed| IdempotencyRecord {
            key: keyed.key.clone(),
            kind: self.kind,
            amount: self.amount,
            point: self.point,
            time_millis: self.time_millis,
        })
    }

    /// Whether the user's stored record for the change's key, made at
    /// `stored_millis` (`None`: no record), lets the change apply: true without a
    /// key, without a record, or for an expired record.
    pub fn key_holds_for(&self, stored_millis: Option<i64>) -> bool {
        match (&self.keyed, stored_millis) {
            (Some(keyed), Some(made)) => made <= keyed.expired_before,
            _ => true,
        }
    }

    /// The conflict error for a change whose key already has a live record.
    pub fn key_conflict(&self) -> StoreError {
        StoreError::conflict(format!(
            "user {}: this idempotency key was used by a change committed meanwhile",
            self.user_id()
        ))
    }

    /// Whether `stored` (the user's current balance, 0 if absent) satisfies the
    /// change's condition.
    pub fn holds_for(&self, stored: u64) -> bool {
        self.expected_point
            .is_none_or(|expected| expected == stored)
    }

    /// The conflict error for a stored balance that fails the condition.
    pub fn conflict(&self, stored: u64) -> StoreError {
        StoreError::conflict(format!(
            "user {}: the balance is {stored}, not the {} this change was computed from",
            self.user_id(),
            self.expected_point.unwrap_or(stored)
        ))
    }

    /// The rows this change writes, with the history id the store assigned.
    pub fn committed(&self, history_id: u64) -> Committed {
        let user_id = self.user_id();
        Committed {
            user_point: UserPoint {
                id: user_id,
                point: self.point,
                update_millis: self.time_millis,
            },
            history: PointHistory {
                id: history_id,
                user_id,
                kind: self.kind,
                amount: self.amount,
                time_millis: self.time_millis,
            },
        }
    }
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Change")
            .field("user_id", &self.user_id())
            .field("expected_point", &self.expected_point)
            .field("point", &self.point)
            .field("kind", &self.kind)
            .field("amount", &self.amount)
            .field("time_millis", &self.time_millis)
            .field("idempotency_key", &self.idempotency_key())
            .finish()
    }
}

/// What a commit wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The new balance row.
    pub user_point: UserPoint,
    /// The new history row, with its store-assigned id.
    pub history: PointHistory,
}

/// Where a pipelined store's sequenced state stood when a mutation read it:
/// handed back with the change computed from the read ([`Change::read_mark`])
/// and to [`PointStore::settle`], so the store can tell whether everything
/// the read showed has become durable. Opaque to everyone but the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMark(u64);

impl ReadMark {
    /// A mark with the store's own meaning.
    pub fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The store's value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A read a mutation makes under the user's lock: the value, and for a
/// pipelined store that answered from state not yet durable, its mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequencedRead<T> {
    /// What was read.
    pub value: T,
    /// `Some` when the value includes changes sequenced but not yet durable.
    pub mark: Option<ReadMark>,
}

impl<T> SequencedRead<T> {
    /// A value read from durable state.
    pub fn durable(value: T) -> Self {
        Self { value, mark: None }
    }
}

/// The outcome of a sequenced change, to await: resolves once the change is
/// durable (or failed, or was refused).
pub type Pending<'a> = BoxFuture<'a, Result<Committed, StoreError>>;

/// A [`Pending`] that is already settled: a store that is not pipelined
/// answers `sequence` with one.
pub fn settled<'a>(committed: Committed) -> Pending<'a> {
    Box::pin(std::future::ready(Ok(committed)))
}

/// Storage for balances and histories.
///
/// # Pipelined stores (optional)
///
/// A store may separate a change's **order** from its **durability**. Such a
/// store implements [`sequence`](Self::sequence) to resolve as soon as the
/// change has its place in the store's order, and promises:
///
/// 1. it applies a user's changes in the order they were sequenced, each under
///    its condition ([`Change`]), and a change once sequenced is committed or
///    refused whatever happens to its caller;
/// 2. [`sequenced_point`](Self::sequenced_point) and
///    [`sequenced_idempotency_record`](Self::sequenced_idempotency_record)
///    answer from the **sequenced** state (every change sequenced so far,
///    durable or not), with a [`ReadMark`] when that state is not all durable;
/// 3. the [`Pending`] answer of a change resolves only once the change is
///    durable, and fails (never succeeds) if any change it was computed on
///    failed: its condition sees to that;
/// 4. [`settle`](Self::settle) resolves once everything a marked read showed is
///    durable, and fails if any of it failed;
/// 5. the plain reads ([`user_point`](Self::user_point),
///    [`histories`](Self::histories)) show durable state only.
///
/// It then drops the change's guard ([`Change::release_guard`]) at
/// sequencing: the user's next request, computing on the sequenced state,
/// can run while this change waits for its fsync, and a burst of one user's
/// changes shares one. The [`PointService`](crate::PointService) holds every
/// answer it computed from sequenced state until that state is durable, so
/// nothing a client is shown can be lost in a crash.
///
/// The defaults describe a store that is not pipelined: `sequence` commits
/// (durably) before it resolves, the sequenced reads are the plain reads, and
/// there is nothing to settle.
///
/// Futures may be dropped at any await (a client disconnects): an implementation
/// must then have committed the change entirely or not at all, and must keep the
/// [`Change`] (which holds the user's lock) until the change is committed or
/// refused.
pub trait PointStore: MaybeSend + MaybeSync {
    /// The user's balance row, or `None` for a user never charged.
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>>;

    /// The user's history, oldest first.
    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>>;

    /// Write the new balance and its history row atomically, if the stored
    /// balance is still [`Change::expected_point`]; otherwise refuse with
    /// [`StoreError::conflict`], changing nothing. A change made with an
    /// idempotency key also writes its record, in the same commit and under its
    /// own condition ([`Change::key_holds_for`]; see [`Change`]).
    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>>;

    /// The user's record for `key`, expired or not (`None`: no record).
    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>>;

    /// Remove at most `limit` records made at or before `expired_before`;
    /// answer how many were removed. A bounded step: a sweeper calls it again
    /// while it removes `limit`.
    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>>;

    /// Whether the store can take changes now (a readiness probe): `Ok` for a
    /// store that is always ready, like the memory store; otherwise a store
    /// error saying why not (a stopped writer, an unreachable database). Cheap
    /// and bounded in time.
    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Place `change` in the store's order; resolve with its [`Pending`]
    /// outcome. A refusal found at once (the condition fails against the
    /// sequenced state) is an `Err` here, with nothing sequenced, while the
    /// caller still holds the user's lock. See the trait docs on pipelining;
    /// by default the change is committed before this resolves.
    fn sequence(&self, change: Change) -> BoxFuture<'_, Result<Pending<'_>, StoreError>> {
        Box::pin(async move { self.commit(change).await.map(settled) })
    }

    /// The user's balance as the next change must be computed from: with
    /// every sequenced change (a pipelined store), with a mark when some are
    /// not yet durable. By default [`user_point`](Self::user_point).
    fn sequenced_point(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<SequencedRead<Option<UserPoint>>, StoreError>> {
        Box::pin(async move { self.user_point(id).await.map(SequencedRead::durable) })
    }

    /// The user's record for `key` including records of sequenced changes (a
    /// pipelined store), with a mark when it is not yet durable. By default
    /// [`idempotency_record`](Self::idempotency_record).
    fn sequenced_idempotency_record<'a>(
        &'a self,
        id: UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<SequencedRead<Option<IdempotencyRecord>>, StoreError>> {
        Box::pin(async move {
            self.idempotency_record(id, key)
                .await
                .map(SequencedRead::durable)
        })
    }

    /// Resolve once everything a read of user `id` marked `mark` showed is
    /// durable; fail if some of it failed (the answer computed from it must
    /// then not be given). By default at once.
    fn settle(&self, id: UserId, mark: ReadMark) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = (id, mark);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// `PointStore` for a smart pointer to a store: every method forwarded.
macro_rules! forward_point_store {
    ($($pointer:ident),*) => {$(
        impl<S: PointStore + ?Sized> PointStore for $pointer<S> {
            fn idempotency_record(
                &self,
                id: UserId,
                key: &IdempotencyKey,
            ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>> {
                (**self).idempotency_record(id, key)
            }

            fn sweep_idempotency(
                &self,
                expired_before: i64,
                limit: usize,
            ) -> BoxFuture<'_, Result<usize, StoreError>> {
                (**self).sweep_idempotency(expired_before, limit)
            }

            fn user_point(
                &self,
                id: UserId,
            ) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
                (**self).user_point(id)
            }

            fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
                (**self).histories(id)
            }

            fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
                (**self).commit(change)
            }

            fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
                (**self).ready()
            }

            fn sequence(&self, change: Change) -> BoxFuture<'_, Result<Pending<'_>, StoreError>> {
                (**self).sequence(change)
            }

            fn sequenced_point(
                &self,
                id: UserId,
            ) -> BoxFuture<'_, Result<SequencedRead<Option<UserPoint>>, StoreError>> {
                (**self).sequenced_point(id)
            }

            fn sequenced_idempotency_record<'a>(
                &'a self,
                id: UserId,
                key: &'a IdempotencyKey,
            ) -> BoxFuture<'a, Result<SequencedRead<Option<IdempotencyRecord>>, StoreError>> {
                (**self).sequenced_idempotency_record(id, key)
            }

            fn settle(&self, id: UserId, mark: ReadMark) -> BoxFuture<'_, Result<(), StoreError>> {
                (**self).settle(id, mark)
            }
        }
    )*};
}

forward_point_store!(Arc, Box);
