//! The sequenced state of the pipelined SQLite store: each user's balance and
//! idempotency records as of every change handed to the writer, durable or
//! not, for the users that have such changes. "The writer" is the SQLite
//! writer thread.
//!
//! # The protocol
//!
//! - **Sequencing** (the caller, holding the user's lock): under the user's
//!   shard mutex, the change's condition is checked against the sequenced state,
//!   the change is sent to the writer, the entry takes its result, and the
//!   change's guard is dropped (a plain `commit` through the same path keeps it
//!   until the writer answers). The channel order of one user's changes is the
//!   order of their entries' updates, so the writer applies them in the order
//!   they were computed, each on top of the one before.
//! - **Answering** (the writer, after the batch's COMMIT and the balance cache
//!   update): the entry counts the change as answered; a change that did not
//!   apply (refused, failed, fail-stop) marks the entry **broken** (what it
//!   shows will never be durable) and counts a failure in the shard. The last
//!   answer removes the entry and opens its latch: the user's state is then
//!   durable state (the cache, SQLite).
//! - **Writing after a failure**: every change of a user's entry was computed
//!   on the changes sequenced before it in that entry. So the writer refuses a
//!   change whose entry is broken, or whose user had a change refused or failed
//!   earlier in the same transaction ([`Dependents`]), as a conflict, even when
//!   its balance condition happens to hold (the balance may have come back to
//!   the same value): a change fails if anything it was computed on failed.
//! - **Reads for a mutation** see the entry, with a [`ReadMark`]: the shard's
//!   failure count. A broken entry is never shown: the reader waits for its
//!   latch and reads durable state.
//! - **Settling** an answer computed from a marked read: if the entry is gone
//!   and the shard counted no failure since the mark, everything read is
//!   durable; if an entry is there, a barrier goes through the writer's queue,
//!   behind every change read, and is answered after their batch, again by
//!   the failure count. The count is per shard, not per user: a failure of
//!   another user of the shard fails the barrier too (a 5xx where a refusal
//!   would have been right, only while changes are failing), never the other
//!   way round.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, MutexGuard};

use pointlock_core::{
    BoxFuture, Change, IdempotencyKey, IdempotencyRecord, ReadMark, SequencedRead, StoreError,
    StoreErrorKind, Unsequenced, UserId, UserPoint,
};
use tokio::sync::Semaphore;

use crate::sharded::Sharded;

/// Shards of the sequenced state.
const SHARDS: usize = 64;

/// The brand of the sequenced state's [`ReadMark`]s: the shard's failure count
/// when the read was made.
struct Brand;

/// The mark of a read made when the shard had counted `failures`.
fn mark(failures: u64) -> ReadMark {
    ReadMark::new::<Brand>(failures)
}

/// A change handed to the sequenced state: from a pipelined `sequence`, its
/// guard released at sequencing ([`Unsequenced`]); from a plain `commit`, its
/// guard kept until the writer answers ([`Change`]).
pub(crate) trait Sequencing {
    /// The change, to check.
    fn change(&self) -> &Change;
    /// The change as the writer takes it.
    fn into_sequenced(self) -> Change;
}

impl Sequencing for Unsequenced {
    fn change(&self) -> &Change {
        Unsequenced::change(self)
    }

    fn into_sequenced(self) -> Change {
        Unsequenced::into_sequenced(self)
    }
}

impl Sequencing for Change {
    fn change(&self) -> &Change {
        self
    }

    fn into_sequenced(self) -> Change {
        self
    }
}

/// The sequenced state (see the [module docs](self)).
pub(crate) struct Overlay {
    shards: Sharded<Shard>,
}

#[derive(Default)]
struct Shard {
    users: HashMap<UserId, Entry>,
    /// Sequenced changes of the shard's users that did not apply, ever.
    failures: u64,
}

struct Entry {
    /// The balance after the last sequenced change.
    point: UserPoint,
    /// Sequenced changes the writer has not answered yet.
    pending: u32,
    /// A sequenced change did not apply: `point` will not become durable.
    broken: bool,
    /// The records of pending keyed changes.
    keys: Vec<IdempotencyRecord>,
    /// Closed when the entry leaves: waiters for a broken entry wake.
    drained: Arc<Semaphore>,
}

/// What the sequenced state says about a user.
pub(crate) enum Seen<T> {
    /// Sequenced, not all durable yet: this, with its mark.
    Sequenced(T, ReadMark),
    /// Nothing sequenced that is not durable: read durable state.
    Durable,
    /// An earlier change failed: wait for the latch, then look again.
    Broken(Arc<Semaphore>),
}

/// What settling a marked read takes.
pub(crate) enum Settle {
    /// Everything read is durable.
    Durable,
    /// Some of it did not apply.
    Failed,
    /// Changes are still pending: a barrier through the writer's queue.
    Barrier,
}

impl Overlay {
    pub(crate) fn new() -> Self {
        Self {
            shards: Sharded::new(SHARDS),
        }
    }

    fn shard(&self, id: UserId) -> MutexGuard<'_, Shard> {
        // Every critical section leaves the shard consistent before anything
        // that can panic (the sends never panic).
        self.shards.lock(id)
    }

    /// The user's sequenced balance.
    pub(crate) fn point(&self, id: UserId) -> Seen<UserPoint> {
        let shard = self.shard(id);
        match shard.users.get(&id) {
            None => Seen::Durable,
            Some(entry) if entry.broken => Seen::Broken(Arc::clone(&entry.drained)),
            Some(entry) => Seen::Sequenced(entry.point, mark(shard.failures)),
        }
    }

    /// The user's sequenced record for `key` (`Durable`: none pending; read
    /// the durable one).
    pub(crate) fn key(&self, id: UserId, key: &IdempotencyKey) -> Seen<IdempotencyRecord> {
        let shard = self.shard(id);
        match shard.users.get(&id) {
            None => Seen::Durable,
            Some(entry) if entry.broken => Seen::Broken(Arc::clone(&entry.drained)),
            Some(entry) => match entry.keys.iter().find(|record| record.key == *key) {
                Some(record) => Seen::Sequenced(record.clone(), mark(shard.failures)),
                None => Seen::Durable,
            },
        }
    }

    /// Check `sequencing` against the sequenced state and, if it holds, `send`
    /// it ([`Sequencing::into_sequenced`]) and make its result the sequenced
    /// state, all under the user's shard mutex. A refusal sends nothing and
    /// changes nothing.
    pub(crate) fn sequence(
        &self,
        sequencing: impl Sequencing,
        send: impl FnOnce(Change) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let change = sequencing.change();
        let id = change.user_id();
        let mut shard = self.shard(id);
        match shard.users.get(&id) {
            Some(entry) if entry.broken => {
                return Err(StoreError::conflict(format!(
                    "user {id}: an earlier change failed after this one was computed"
                )));
            }
            Some(entry) => {
                if !change.holds_for(entry.point.point) {
                    return Err(change.conflict(entry.point.point));
                }
                if let Some(key) = change.idempotency_key() {
                    let made = entry
                        .keys
                        .iter()
                        .find(|record| record.key == *key)
                        .map(|record| record.time_millis);
                    if !change.key_holds_for(made) {
                        return Err(change.key_conflict());
                    }
                }
            }
            None => {
                // Computed from sequenced state that has drained since: it is
                // durable unless a change failed meanwhile (a mark that is not
                // ours cannot tell: refused too).
                if change
                    .read_mark()
                    .is_some_and(|mark| mark.get::<Brand>() != Some(shard.failures))
                {
                    return Err(StoreError::conflict(format!(
                        "user {id}: a change this one was computed on failed"
                    )));
                }
            }
        }
        let point = change.committed(0).user_point;
        let record = change.idempotency_record();
        send(sequencing.into_sequenced())?;
        let entry = shard.users.entry(id).or_insert_with(|| Entry {
            point,
            pending: 0,
            broken: false,
            keys: Vec::new(),
            drained: Arc::new(Semaphore::new(0)),
        });
        entry.point = point;
        entry.pending += 1;
        entry.keys.extend(record);
        Ok(())
    }

    /// The writer has answered a sequenced change of `id` (made with `key`):
    /// `applied` or not.
    pub(crate) fn answered(&self, id: UserId, key: Option<&IdempotencyKey>, applied: bool) {
        let mut shard = self.shard(id);
        if !applied {
            shard.failures += 1;
        }
        let Some(entry) = shard.users.get_mut(&id) else {
            return;
        };
        entry.broken |= !applied;
        if let Some(key) = key {
            if let Some(at) = entry.keys.iter().position(|record| record.key == *key) {
                entry.keys.swap_remove(at);
            }
        }
        entry.pending = entry.pending.saturating_sub(1);
        if entry.pending == 0 {
            if let Some(entry) = shard.users.remove(&id) {
                entry.drained.close();
            }
        }
    }

    /// What settling a read of `id` marked `mark` takes now.
    pub(crate) fn settle(&self, id: UserId, mark: ReadMark) -> Settle {
        let shard = self.shard(id);
        if shard.users.contains_key(&id) {
            Settle::Barrier
        } else if Some(shard.failures) == mark.get::<Brand>() {
            Settle::Durable
        } else {
            Settle::Failed
        }
    }

    /// A barrier's answer, once every change sequenced before it is answered.
    pub(crate) fn barrier_holds(&self, id: UserId, mark: ReadMark) -> bool {
        Some(self.shard(id).failures) == mark.get::<Brand>()
    }

    /// Whether a change of `id` that did not apply has broken the user's
    /// entry: the user's changes still to be written were computed on it.
    pub(crate) fn is_broken(&self, id: UserId) -> bool {
        self.shard(id)
            .users
            .get(&id)
            .is_some_and(|entry| entry.broken)
    }

    /// Users with sequenced changes not yet durable (for tests).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn users(&self) -> usize {
        self.shards.each().map(|shard| shard.users.len()).sum()
    }
}

/// `PipelinedStore::sequenced_point` and `sequenced_idempotency_record` of a
/// store with this sequenced state (`None`: not pipelined): what `look` finds
/// sequenced, marked and settled by `settle`; or, with nothing pending,
/// `durable()`. A broken entry is waited out.
pub(crate) async fn read<'a, T, F>(
    overlay: Option<&Overlay>,
    look: impl Fn(&Overlay) -> Seen<T>,
    durable: impl FnOnce() -> F,
    settle: impl FnOnce(ReadMark) -> BoxFuture<'a, Result<(), StoreError>>,
) -> Result<SequencedRead<'a, Option<T>>, StoreError>
where
    F: Future<Output = Result<Option<T>, StoreError>>,
{
    if let Some(overlay) = overlay {
        loop {
            match look(overlay) {
                Seen::Sequenced(value, mark) => {
                    return Ok(SequencedRead::marked(Some(value), mark, settle(mark)));
                }
                Seen::Durable => break,
                // The latch only closes; an error means it has.
                Seen::Broken(latch) => drop(latch.acquire().await),
            }
        }
    }
    durable().await.map(SequencedRead::durable)
}

/// The settling of a read marked `mark`: at once when everything the read
/// showed has drained (or failed), else through `barrier()`, which queues a
/// barrier behind the user's sequenced changes and resolves with its answer.
pub(crate) async fn settle<F>(
    overlay: Option<&Overlay>,
    id: UserId,
    mark: ReadMark,
    barrier: impl FnOnce() -> F,
) -> Result<(), StoreError>
where
    F: Future<Output = Result<(), StoreError>>,
{
    let Some(overlay) = overlay else {
        return Ok(());
    };
    match overlay.settle(id, mark) {
        Settle::Durable => Ok(()),
        Settle::Failed => Err(failed_under()),
        Settle::Barrier => barrier().await,
    }
}

/// The answer given instead of one computed from sequenced state that did not
/// become durable (a refusal, a replay): nothing was changed.
pub(crate) fn failed_under() -> StoreError {
    StoreError::with_kind(
        StoreErrorKind::Unavailable,
        "a change this answer was computed on failed before it was durable; nothing was \
         changed by this request; retry",
    )
}

/// The users whose change was refused or failed earlier in one run of
/// sequenced changes through the writer (one transaction): their later changes
/// in the run were computed on it (see the [module docs](self)).
#[derive(Default)]
pub(crate) struct Dependents {
    broken: Vec<UserId>,
}

impl Dependents {
    /// The refusal of `change` if something it was computed on did not apply:
    /// an earlier change of its user in this run, or one already answered
    /// (`overlay`'s broken entry). `None`: write it.
    pub(crate) fn refusal(&self, overlay: Option<&Overlay>, change: &Change) -> Option<StoreError> {
        let overlay = overlay?;
        let id = change.user_id();
        (self.broken.contains(&id) || overlay.is_broken(id)).then(|| {
            StoreError::conflict(format!(
                "user {id}: an earlier change of this user, which this one was computed on, \
                 did not apply"
            ))
        })
    }

    /// `change` did not apply: refuse its user's later changes in this run.
    pub(crate) fn broke(&mut self, change: &Change) {
        if !self.broken.contains(&change.user_id()) {
            self.broken.push(change.user_id());
        }
    }
}
