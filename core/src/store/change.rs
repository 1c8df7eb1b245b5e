//! [`Change`]: one change for a store to commit, and [`Committed`], what it wrote.

use std::sync::Arc;

use crate::domain::{Amount, PointHistory, TransactionType, UserId, UserPoint};
use crate::error::StoreError;
use crate::idempotency::{IdempotencyKey, IdempotencyRecord};
use crate::lock::KeyGuard;
use crate::store::ReadMark;

/// One change to commit: the user's new balance, the history row explaining it,
/// the balance it was computed from, an idempotency record if it was made with
/// a key, and the user's lock.
///
/// What a store must do with it is stated once, in [`PointStore`]'s docs: the
/// [condition](crate::store::PointStore#the-condition) (applied only if the
/// stored balance is still [`expected_point`](Self::expected_point)), the
/// [key condition](crate::store::PointStore#idempotency-records), and
/// [the guard](crate::store::PointStore#the-guard-travels-with-the-change) the
/// change carries, which the store keeps until it has answered.
///
/// Only [`PointService`](crate::PointService) makes changes, from a guard of its
/// own lock: no public constructor exists (outside the `test-util` feature), so
/// nothing outside the service can commit a change without holding that user's
/// lock. A change is not `Clone` (a clone would hold the user's lock too), and
/// nothing on it releases the guard: only a pipelined store can, through
/// [`Unsequenced::into_sequenced`](crate::store::Unsequenced::into_sequenced).
///
/// [`PointStore`]: crate::store::PointStore
pub struct Change {
    /// The user's guard; `None` once a pipelined store has sequenced the change.
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

    /// The same change, computed from a pipelined store's read marked `mark`.
    pub(crate) fn with_read_mark(mut self, mark: Option<ReadMark>) -> Self {
        self.read_mark = mark;
        self
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

    /// The same change without its guard (a pipelined store sequenced it).
    pub(crate) fn release_guard(mut self) -> Self {
        self.held = None;
        self
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

    /// [`Change::for_tests`] made with an idempotency key. Only with the
    /// `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_key_for_tests(self, key: IdempotencyKey, expired_before: i64) -> Self {
        self.with_key(key, expired_before)
    }

    /// Whose balance changes (the key of the guard the change carries).
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// Where a pipelined store's sequenced state stood when this change was
    /// computed from it (`None`: computed from durable state). Only the store
    /// that made the mark can read it ([`ReadMark::get`]).
    pub fn read_mark(&self) -> Option<ReadMark> {
        self.read_mark
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
    /// may be replaced; a later one refuses the change. Meaningless without a
    /// key.
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
        Committed::of(
            self.user_id(),
            self.point,
            (self.kind, self.amount),
            self.time_millis,
            history_id,
        )
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
            .field("holds_guard", &self.held.is_some())
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

impl Committed {
    /// User `user`'s balance `point` and history row `history_id` after a
    /// change of `kind` and `amount` made at `time_millis`.
    pub(crate) fn of(
        user: UserId,
        point: u64,
        (kind, amount): (TransactionType, Amount),
        time_millis: i64,
        history_id: u64,
    ) -> Self {
        Self {
            user_point: UserPoint {
                id: user,
                point,
                update_millis: time_millis,
            },
            history: PointHistory {
                id: history_id,
                user_id: user,
                kind,
                amount,
                time_millis,
            },
        }
    }
}
