//! [`PipelinedStore`]: a store that separates a change's order from its
//! durability, and the types that carry its promises.

use std::any::TypeId;

use crate::domain::{UserId, UserPoint};
use crate::error::StoreError;
use crate::idempotency::{IdempotencyKey, IdempotencyRecord};
use crate::store::{BoxFuture, Change, Committed, PointStore};

/// A store that gives a change its place in the store's **order** before the
/// change is **durable**, so the user's next change can be computed while this
/// one waits for its fsync, and a burst of one user's changes shares one.
///
/// A pipelined store is a [`PointStore`] too (its [`commit`](PointStore::commit)
/// keeps every promise of a plain store), and says so with
/// [`PointStore::pipelined`]: the [`PointService`](crate::PointService) then
/// computes each change from the **sequenced state** (every change sequenced so
/// far, durable or not) and hands it to [`sequence`](Self::sequence) instead.
///
/// # The promises
///
/// 1. **Order.** The store applies a user's sequenced changes in the order they
///    were sequenced, each under its
///    [condition](PointStore#the-condition), and a change once sequenced is
///    committed or refused whatever happens to its caller.
/// 2. **Release at sequencing.** [`sequence`](Self::sequence) takes the change
///    with its user's guard ([`Unsequenced`]) and releases the guard
///    ([`Unsequenced::into_sequenced`]) only once the change has its place in the
///    order and its result is the user's sequenced state, so that the user's
///    next request, computing on that state, builds on it. A refusal found at
///    once (the condition fails against the sequenced state) is an `Err` of
///    `sequence`, with nothing sequenced, while the caller still holds the lock.
/// 3. **Sequenced reads, and what they must wait for.**
///    [`sequenced_point`](Self::sequenced_point) and
///    [`sequenced_idempotency_record`](Self::sequenced_idempotency_record)
///    answer from the sequenced state. When what they show is not all durable,
///    the read is [marked](SequencedRead::marked): it carries a [`ReadMark`]
///    and a future that resolves once everything the read showed is durable and
///    fails if any of it failed. Nothing computed from a marked read may be
///    answered before that future resolves (the service awaits it), so no
///    client is shown state a crash can lose.
/// 4. **Durable before answered; failed if its basis failed.** The [`Pending`]
///    answer of a sequenced change resolves only once the change is durable,
///    and fails (never succeeds) if any change it was computed on did not
///    apply: once a user's sequenced change fails or is refused, every change of
///    that user sequenced after it and before the user's pipeline drained is
///    refused too (it was computed on state that will never be durable), even
///    where its balance condition happens to hold.
/// 5. **Plain reads show durable state.** [`user_point`](PointStore::user_point),
///    [`histories`](PointStore::histories) and
///    [`idempotency_record`](PointStore::idempotency_record) show durable state
///    only.
///
/// Every method is required: nothing here has a default that could quietly
/// break a promise. A store that does not override [`PointStore::pipelined`]
/// is simply used as a plain store.
pub trait PipelinedStore: PointStore {
    /// The user's balance as the next change must be computed from: with every
    /// sequenced change, [marked](SequencedRead::marked) when some are not yet
    /// durable (promise 3).
    fn sequenced_point(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<SequencedRead<'_, Option<UserPoint>>, StoreError>>;

    /// The user's record for `key` (expired or not; `None`: none), including
    /// the records of sequenced changes, marked when not yet durable
    /// (promise 3).
    fn sequenced_idempotency_record<'a>(
        &'a self,
        id: UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<SequencedRead<'a, Option<IdempotencyRecord>>, StoreError>>;

    /// Place `change` in the store's order and release its guard there
    /// (promises 1 and 2); resolve with its [`Pending`] outcome (promise 4).
    fn sequence(&self, change: Unsequenced) -> BoxFuture<'_, Result<Pending<'_>, StoreError>>;
}

/// The outcome of a sequenced change, to await: resolves once the change is
/// durable, or with the error it failed or was refused with
/// ([`PipelinedStore`] promise 4).
pub type Pending<'a> = BoxFuture<'a, Result<Committed, StoreError>>;

/// A change on its way into a [`PipelinedStore`]'s order, still holding its
/// user's guard. Only the service makes one.
#[derive(Debug)]
pub struct Unsequenced(Change);

impl Unsequenced {
    /// `change`, to be sequenced by a pipelined store.
    pub(crate) fn new(change: Change) -> Self {
        Self(change)
    }

    /// `change` to hand to [`PipelinedStore::sequence`] directly, as the
    /// service would. Only with the `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests(change: Change) -> Self {
        Self(change)
    }

    /// The change, to check against the sequenced state.
    pub fn change(&self) -> &Change {
        &self.0
    }

    /// The change, its user's guard released: call this once the change has
    /// its place in the store's order and its result is the user's sequenced
    /// state ([`PipelinedStore`] promise 2).
    pub fn into_sequenced(self) -> Change {
        self.0.release_guard()
    }
}

/// Where a pipelined store's sequenced state stood when a read showed it: handed
/// back with the change computed from the read ([`Change::read_mark`]), so the
/// store can tell whether that state has since failed.
///
/// Made and read only by the store that issued it: [`new`](Self::new) and
/// [`get`](Self::get) take a **brand**, a type the store keeps private, so no
/// one else can forge one of its marks or read one as theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMark {
    brand: TypeId,
    raw: u64,
}

impl ReadMark {
    /// A mark of the store whose brand is `B`, with the store's own meaning.
    pub fn new<B: 'static>(raw: u64) -> Self {
        Self {
            brand: TypeId::of::<B>(),
            raw,
        }
    }

    /// The store's value, if this is a mark of brand `B`; `None` for another
    /// store's mark.
    pub fn get<B: 'static>(self) -> Option<u64> {
        (self.brand == TypeId::of::<B>()).then_some(self.raw)
    }
}

/// A read of a pipelined store's sequenced state: the value and, when the
/// value shows changes not yet durable, what an answer computed from it must
/// wait for ([`PipelinedStore`] promise 3).
pub struct SequencedRead<'a, T> {
    /// What was read.
    pub value: T,
    marked: Option<Marked<'a>>,
}

/// The mark of a read and the future that settles it.
pub(crate) struct Marked<'a> {
    pub(crate) mark: ReadMark,
    pub(crate) settled: BoxFuture<'a, Result<(), StoreError>>,
}

impl<'a, T> SequencedRead<'a, T> {
    /// A value read from durable state: nothing to wait for.
    pub fn durable(value: T) -> Self {
        Self {
            value,
            marked: None,
        }
    }

    /// A value that includes changes sequenced but not yet durable, read at
    /// `mark`: `settled` resolves once everything it shows is durable, and
    /// fails if any of it failed (the answer computed from it must then not
    /// be given).
    pub fn marked(
        value: T,
        mark: ReadMark,
        settled: BoxFuture<'a, Result<(), StoreError>>,
    ) -> Self {
        Self {
            value,
            marked: Some(Marked { mark, settled }),
        }
    }

    /// Whether the value includes changes not yet durable.
    pub fn is_marked(&self) -> bool {
        self.marked.is_some()
    }

    /// The value, and its mark and settling future if it is marked.
    pub(crate) fn into_parts(self) -> (T, Option<Marked<'a>>) {
        (self.value, self.marked)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for SequencedRead<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequencedRead")
            .field("value", &self.value)
            .field("mark", &self.marked.as_ref().map(|marked| marked.mark))
            .finish()
    }
}
