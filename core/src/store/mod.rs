//! Where balances and histories live: the store contract.
//!
//! - [`PointStore`]: every store. Reads, and the **conditional, atomic
//!   commit** of one [`Change`], durable before it is answered. Its docs state
//!   the promises every store keeps.
//! - [`PipelinedStore`]: a store that also gives a change its place in the
//!   store's order before it is durable (the durable SQL stores). Its docs
//!   state the promises a pipelined store keeps on top.
//! - [`DecidingStore`]: a store that takes requests and decides each one
//!   itself, with the core policy, at its place in the user's order (the
//!   PostgreSQL store, shared by several processes). Its docs state its
//!   promises.
//! - [`memory::MemoryStore`]: the in-memory store (plain).
//!
//! Over a plain or a pipelined store the [`PointService`](crate::PointService)
//! checks the policies under the user's lock; a deciding store applies the
//! same policy itself ([`Request::decide`]). The service runs over every kind,
//! told which by [`PointStore::deciding`] and [`PointStore::pipelined`].

mod change;
mod deciding;
pub mod memory;
mod pipelined;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{PointHistory, UserId, UserPoint};
use crate::error::StoreError;
use crate::idempotency::{IdempotencyKey, IdempotencyRecord};
use crate::sync::{MaybeSend, MaybeSync};

pub use change::{Change, Committed};
pub use deciding::{Decided, DecidingStore, Decision, Request};
pub(crate) use pipelined::Marked;
pub use pipelined::{Pending, PipelinedStore, ReadMark, SequencedRead, Unsequenced};

/// A boxed store future: `Send` on native targets, not on wasm32 (see [`MaybeSend`]).
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed store future: `Send` on native targets, not on wasm32 (see [`MaybeSend`]).
#[cfg(target_arch = "wasm32")]
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// An injected sleep: the memory store's simulated latency waits through it.
pub type Sleeper = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// Storage for balances and histories: what every store answers, and its one
/// way to write, [`commit`](Self::commit). The promises every store keeps are
/// stated here; a [`PipelinedStore`] keeps those of its own on top.
///
/// # The condition
///
/// A store applies a [`Change`] only if the user's stored balance still equals
/// [`Change::expected_point`] (a user with no row counts as 0), atomically with
/// the write; otherwise it refuses it with a [`StoreError::conflict`] that
/// changes nothing. The new balance and its history row are written together
/// or not at all. With the user's lock in front this never fires; it is what
/// keeps a stale change from overwriting a newer balance when something
/// bypasses the lock (another process on the same database, or a guard
/// released too early). The service answers a conflict by reading again and
/// retrying, a bounded number of times.
///
/// # Idempotency records
///
/// A change made with an [`IdempotencyKey`] ([`Change::idempotency_key`])
/// writes its [record](Change::idempotency_record) in the same commit, under a
/// second condition: the user may have no record for that key, or only an
/// expired one (made at or before [`Change::key_expired_before`]), which the
/// new record replaces ([`Change::key_holds_for`]). A live record for the key
/// refuses the whole change as a conflict ([`Change::key_conflict`]), changing
/// nothing; the service then finds the record and answers from it. So a key
/// applies at most once even when two processes commit it at the same moment.
///
/// # The guard travels with the change
///
/// A [`Change`] holds its user's lock. A store keeps the change, and so the
/// lock, until it has answered for it (committed or refused), whatever happens
/// to the caller's future in the meantime: a store that keeps working on a
/// change after its caller stopped waiting (a writer thread, a database round
/// trip) holds the change until then, so the user's next request cannot read
/// the balance before this change is settled.
///
/// # Cancellation and durability
///
/// Futures may be dropped at any await (a client disconnects): the change is
/// then committed entirely or not at all. A commit resolves `Ok` only once the
/// change is as durable as the store makes anything, and the reads show
/// committed state: a read issued after an answer sees its change.
pub trait PointStore: MaybeSend + MaybeSync {
    /// The user's balance row, or `None` for a user never charged.
    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>>;

    /// The user's history, oldest first.
    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>>;

    /// One page of the user's history, oldest first: at most `limit` rows
    /// whose id is above `after` (0: from the first row). What it costs is
    /// the page, in the stores of this workspace; the provided method reads
    /// the whole [`histories`](Self::histories) and keeps the page, so a
    /// store of your own should override it.
    fn histories_page(
        &self,
        id: UserId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        let all = self.histories(id);
        Box::pin(async move {
            Ok(all
                .await?
                .into_iter()
                .filter(|row| row.id > after)
                .take(limit)
                .collect())
        })
    }

    /// Commit `change` under its [condition](Self#the-condition) (and its
    /// [key condition](Self#idempotency-records)), keeping the change until it
    /// has answered ([the guard](Self#the-guard-travels-with-the-change)).
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

    /// This store as a [`PipelinedStore`], if it is one now: the service then
    /// sequences changes instead of committing them. `None` by default: the
    /// store is used as a plain store, which is always correct (only slower
    /// for a store that could pipeline).
    fn pipelined(&self) -> Option<&dyn PipelinedStore> {
        None
    }

    /// This store as a [`DecidingStore`], if it is one: the service then
    /// hands it requests to decide instead of computing changes. `None` by
    /// default.
    fn deciding(&self) -> Option<&dyn DecidingStore> {
        None
    }
}

/// `PointStore` for a smart pointer to a store: every method forwarded.
macro_rules! forward_point_store {
    ($($pointer:ident),*) => {$(
        impl<S: PointStore + ?Sized> PointStore for $pointer<S> {
            fn user_point(
                &self,
                id: UserId,
            ) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
                (**self).user_point(id)
            }

            fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
                (**self).histories(id)
            }

            fn histories_page(
                &self,
                id: UserId,
                after: u64,
                limit: usize,
            ) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
                (**self).histories_page(id, after, limit)
            }

            fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
                (**self).commit(change)
            }

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

            fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
                (**self).ready()
            }

            fn pipelined(&self) -> Option<&dyn PipelinedStore> {
                (**self).pipelined()
            }

            fn deciding(&self) -> Option<&dyn DecidingStore> {
                (**self).deciding()
            }
        }
    )*};
}

forward_point_store!(Arc, Box);
