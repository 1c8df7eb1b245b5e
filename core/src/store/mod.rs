//! Where balances and histories live.
//!
//! A [`PointStore`] reads balances and histories and commits one change at a time
//! **atomically**: the new balance and its history row are written together or not
//! at all. The store does not check policies or serialize users: the
//! [`PointService`](crate::PointService) does that, under the user's lock.

pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Amount, PointHistory, TransactionType, UserId, UserPoint};
use crate::error::StoreError;
use crate::sync::{MaybeSend, MaybeSync};

/// A boxed store future: `Send` on native targets, not on wasm32 (see [`MaybeSend`]).
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed store future: `Send` on native targets, not on wasm32 (see [`MaybeSend`]).
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// An injected sleep: the memory store's simulated latency waits through it.
pub type Sleeper = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// One change to commit: the user's new balance and the history row explaining it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Whose balance changes.
    pub user_id: UserId,
    /// The balance after the change (already checked against the policy).
    pub point: u64,
    /// Charge or use.
    pub kind: TransactionType,
    /// The amount charged or used.
    pub amount: Amount,
    /// When the change is made: both `updateMillis` and `timeMillis`.
    pub time_millis: i64,
}

/// What a commit wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The new balance row.
    pub user_point: UserPoint,
    /// The new history row, with its store-assigned id.
    pub history: PointHistory,
}

/// How a store that batches commits (group commit) has batched them so far.
///
/// `batch_ops_log2[i]` counts batches of `2^i..2^(i+1)` changes (the last bucket
/// also takes anything larger).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitStats {
    /// Transactions committed (or attempted) by the writer.
    pub batches: u64,
    /// Changes those batches carried.
    pub ops: u64,
    /// The largest batch so far.
    pub batch_ops_max: u64,
    /// Batches that failed as a whole and were retried one change at a time.
    pub batches_retried: u64,
    /// Changes that failed (each answered with its own store error).
    pub ops_failed: u64,
    /// Batch sizes by powers of two: 1, 2-3, 4-7, … 256+.
    pub batch_ops_log2: [u64; 9],
}

/// Storage for balances and histories.
///
/// Futures may be dropped at any await (a client disconnects): an implementation
/// must then have committed the change entirely or not at all.
pub trait PointStore: MaybeSend + MaybeSync {
    /// The user's balance row, or `None` for a user never charged.
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>>;

    /// The user's history, oldest first.
    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>>;

    /// Write the new balance and its history row atomically.
    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>>;

    /// Group-commit statistics, for stores that batch commits (`None` otherwise).
    fn commit_stats(&self) -> Option<CommitStats> {
        None
    }
}

impl<S: PointStore + ?Sized> PointStore for Arc<S> {
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        (**self).user_point(id)
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        (**self).histories(id)
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        (**self).commit(change)
    }

    fn commit_stats(&self) -> Option<CommitStats> {
        (**self).commit_stats()
    }
}

impl<S: PointStore + ?Sized> PointStore for Box<S> {
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        (**self).user_point(id)
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        (**self).histories(id)
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        (**self).commit(change)
    }

    fn commit_stats(&self) -> Option<CommitStats> {
        (**self).commit_stats()
    }
}
