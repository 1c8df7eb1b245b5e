//! How the service reaches a store's state and writes: a plain store's reads
//! and [`commit`](PointStore::commit), or a pipelined store's sequenced reads
//! and [`sequence`](PipelinedStore::sequence), chosen by
//! [`PointStore::pipelined`].

use crate::domain::{UserId, UserPoint};
use crate::error::StoreError;
use crate::idempotency::{IdempotencyKey, IdempotencyRecord};
use crate::store::{
    Change, Committed, Marked, Pending, PipelinedStore, PointStore, ReadMark, SequencedRead,
    Unsequenced,
};

/// A store as one mutation sees it.
pub(super) enum Writes<'a, S: ?Sized> {
    /// A plain store: durable reads, and a commit that answers once durable
    /// and keeps the change's guard until then.
    Commit(&'a S),
    /// A pipelined store: reads of the sequenced state, and a sequencing that
    /// releases the change's guard once the change has its place.
    Sequence(&'a dyn PipelinedStore),
}

/// What a change handed to the store became.
pub(super) enum Outcome<'a> {
    /// Committed (a plain store): durable.
    Done(Committed),
    /// Sequenced (a pipelined store): to await, without the user's lock.
    Pending(Pending<'a>),
}

impl<'a, S: PointStore + ?Sized> Writes<'a, S> {
    pub(super) fn of(store: &'a S) -> Self {
        match store.pipelined() {
            Some(pipelined) => Self::Sequence(pipelined),
            None => Self::Commit(store),
        }
    }

    /// The user's balance as the next change must be computed from.
    pub(super) async fn point(
        &self,
        id: UserId,
    ) -> Result<SequencedRead<'a, Option<UserPoint>>, StoreError> {
        match self {
            Self::Commit(store) => store.user_point(id).await.map(SequencedRead::durable),
            Self::Sequence(store) => store.sequenced_point(id).await,
        }
    }

    /// The user's record for `key`, as the next change must see it.
    pub(super) async fn record<'k>(
        &self,
        id: UserId,
        key: &'k IdempotencyKey,
    ) -> Result<SequencedRead<'k, Option<IdempotencyRecord>>, StoreError>
    where
        'a: 'k,
    {
        match self {
            Self::Commit(store) => store
                .idempotency_record(id, key)
                .await
                .map(SequencedRead::durable),
            Self::Sequence(store) => store.sequenced_idempotency_record(id, key).await,
        }
    }

    /// Hand `change` to the store. An `Err` changed nothing, and was found
    /// while the caller still held the user's lock.
    pub(super) async fn apply(&self, change: Change) -> Result<Outcome<'a>, StoreError> {
        match self {
            Self::Commit(store) => store.commit(change).await.map(Outcome::Done),
            Self::Sequence(store) => store
                .sequence(Unsequenced::new(change))
                .await
                .map(Outcome::Pending),
        }
    }
}

/// The first marked read of one attempt: every answer computed in that
/// attempt waits for what it showed to be durable.
pub(super) struct Basis<'a>(Option<Marked<'a>>);

impl<'a> Basis<'a> {
    /// Nothing read yet.
    pub(super) fn new() -> Self {
        Self(None)
    }

    /// The value of `read`, keeping its mark if it is the first marked one.
    /// (Under the user's lock nothing is sequenced between one attempt's
    /// reads, so the first mark covers all of them.)
    pub(super) fn value_of<T>(&mut self, read: SequencedRead<'a, T>) -> T {
        let (value, marked) = read.into_parts();
        if self.0.is_none() {
            self.0 = marked;
        }
        value
    }

    /// The mark a change computed in this attempt carries.
    pub(super) fn mark(&self) -> Option<ReadMark> {
        self.0.as_ref().map(|marked| marked.mark)
    }

    /// Resolve once everything read is durable; fail if some of it failed.
    pub(super) async fn settled(self) -> Result<(), StoreError> {
        match self.0 {
            Some(marked) => marked.settled.await,
            None => Ok(()),
        }
    }
}
