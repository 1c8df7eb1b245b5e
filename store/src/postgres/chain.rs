//! The pipelined per-user chains (see the [store's docs](super),
//! "Pipelining"): each user with sequenced work has a queue and a task that
//! commits what is queued in one transaction and answers it in order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use pointlock_core::{Change, Committed, Pending, ReadMark, StoreError, UserId};
use tokio::sync::oneshot;

use super::sql::statement_sql;
use super::PostgresStore;
use crate::batch::{BatchPlan, Written};
use crate::reply;
use crate::sequenced::{self, Dependents, Overlay, Sequencing};
use crate::sharded::Sharded;

/// Pipelining: the sequenced state, and per user with sequenced work the
/// queue its chain task works through (present while the task runs).
pub(super) struct Pipeline {
    pub(super) overlay: Overlay,
    chains: Sharded<Chains>,
}

/// One shard of the chains: each user's queue of sequenced work.
type Chains = HashMap<UserId, VecDeque<Item>>;

/// Shards of the chains.
const CHAIN_SHARDS: usize = 64;
/// The most changes one chain transaction carries.
const CHAIN_OPS_MAX: usize = 64;
/// Who answers pipelined changes, in errors.
const CHAIN: &str = "the PostgreSQL chain";

/// Sequenced work of one user, in order.
pub(super) enum Item {
    Change(Change, oneshot::Sender<Result<Committed, StoreError>>),
    Barrier(ReadMark, oneshot::Sender<Result<(), StoreError>>),
}

impl Pipeline {
    pub(super) fn new() -> Self {
        Self {
            overlay: Overlay::new(),
            chains: Sharded::new(CHAIN_SHARDS),
        }
    }

    fn chain(&self, id: UserId) -> MutexGuard<'_, Chains> {
        // Each critical section is one queue operation: a panic cannot leave
        // the shard half-changed.
        self.chains.lock(id)
    }
}

impl PostgresStore {
    /// A change checked against the sequenced state, queued on the user's
    /// chain (whose task owns it from here, whatever happens to the caller)
    /// and made the sequenced state, all under the user's shard mutex of the
    /// sequenced state; its guard dropped there ([`Unsequenced`], from
    /// [`PipelinedStore::sequence`]) or kept until answered ([`Change`], from a
    /// plain commit). The answer comes with the chain's COMMIT.
    ///
    /// [`Unsequenced`]: pointlock_core::Unsequenced
    /// [`PipelinedStore::sequence`]: pointlock_core::PipelinedStore::sequence
    pub(super) fn sequence_on_chain(
        &self,
        pipeline: &Arc<Pipeline>,
        change: impl Sequencing,
    ) -> Result<Pending<'static>, StoreError> {
        let id = change.change().user_id();
        let (reply, answer) = oneshot::channel();
        pipeline.overlay.sequence(change, |change| {
            self.enqueue(pipeline, id, Item::Change(change, reply));
            Ok(())
        })?;
        Ok(Box::pin(reply::received(answer, CHAIN)))
    }

    /// A barrier behind the user's queued changes: `Ok` once they are
    /// answered, if none of those a read marked `mark` showed failed.
    pub(super) async fn barrier(
        &self,
        pipeline: &Arc<Pipeline>,
        id: UserId,
        mark: ReadMark,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(pipeline, id, Item::Barrier(mark, reply));
        reply::received(answer, CHAIN).await
    }

    /// Queue `item` on its user's chain; start the chain's task if none runs.
    fn enqueue(&self, pipeline: &Arc<Pipeline>, id: UserId, item: Item) {
        let mut chains = pipeline.chain(id);
        if let Some(queue) = chains.get_mut(&id) {
            queue.push_back(item);
            return;
        }
        chains.insert(id, VecDeque::from([item]));
        drop(chains);
        let store = self.clone();
        let pipeline = Arc::clone(pipeline);
        tokio::spawn(async move { store.run_chain(&pipeline, id).await });
    }

    /// A user's chain task: take what is queued, commit its changes in one
    /// transaction, answer everything in order; until the queue is empty.
    async fn run_chain(&self, pipeline: &Pipeline, id: UserId) {
        loop {
            let items: Vec<Item> = {
                let mut chains = pipeline.chain(id);
                let Some(queue) = chains.get_mut(&id) else {
                    return;
                };
                if queue.is_empty() {
                    chains.remove(&id);
                    return;
                }
                let take = queue.len().min(CHAIN_OPS_MAX);
                queue.drain(..take).collect()
            };
            let changes: Vec<&Change> = items
                .iter()
                .filter_map(|item| match item {
                    Item::Change(change, _) => Some(change),
                    Item::Barrier(..) => None,
                })
                .collect();
            let mut outcomes = self
                .commit_chain(&pipeline.overlay, &changes)
                .await
                .into_iter();
            for item in items {
                match item {
                    Item::Change(change, reply) => {
                        let outcome = outcomes.next().unwrap_or_else(|| {
                            Err(StoreError::new("the PostgreSQL chain lost an outcome"))
                        });
                        pipeline
                            .overlay
                            .answered(id, change.idempotency_key(), outcome.is_ok());
                        drop(change);
                        let _ = reply.send(outcome);
                    }
                    Item::Barrier(mark, reply) => {
                        let answer = if pipeline.overlay.barrier_holds(id, mark) {
                            Ok(())
                        } else {
                            Err(sequenced::failed_under())
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
        }
    }

    /// One user's consecutive changes, batch then each alone
    /// ([`BatchPlan`]): several in one transaction (one WAL flush); after a
    /// failed statement, which aborts a PostgreSQL transaction, each alone. A
    /// change computed on one that did not apply is refused unwritten (see the
    /// crate's `sequenced.rs`): the changes are answered only at the end, so
    /// the changes written alone keep track of those that did not apply.
    async fn commit_chain(
        &self,
        overlay: &Overlay,
        changes: &[&Change],
    ) -> Vec<Result<Committed, StoreError>> {
        let mut plan = BatchPlan::new(changes.len());
        let mut alone = Dependents::default();
        while let Some(next) = plan.next() {
            let written = self.write(overlay, &mut alone, &changes[next]).await;
            plan.written(written);
        }
        plan.finish()
    }

    /// `changes` in one transaction; one change alone in its one statement,
    /// `alone` keeping track of what did not apply across those.
    async fn write(
        &self,
        overlay: &Overlay,
        alone: &mut Dependents,
        changes: &[&Change],
    ) -> Written<Committed> {
        let all = |error: StoreError| Written::Answered(vec![Err(error); changes.len()]);
        if let [change] = changes {
            if let Some(refused) = self.refusal(overlay, alone, change) {
                return Written::Answered(vec![Err(refused)]);
            }
            let outcome = self.commit_now(change).await;
            if outcome.is_err() {
                alone.broke(change);
            }
            return Written::Answered(vec![outcome]);
        }
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(error) => return all(error),
        };
        let transaction = match client.transaction().await {
            Ok(transaction) => transaction,
            Err(e) => return all(self.failed(&e, false)),
        };
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut dependents = Dependents::default();
        for change in changes {
            if let Some(refused) = self.refusal(overlay, &dependents, change) {
                outcomes.push(Err(refused));
                continue;
            }
            let ran = match transaction.prepare_cached(statement_sql(change)).await {
                Ok(statement) => self.run_change(&*transaction, &statement, change).await,
                Err(e) => Err(self.failed(&e, false)),
            };
            match ran {
                Ok(outcome) => {
                    if outcome.is_err() {
                        dependents.broke(change);
                    }
                    outcomes.push(outcome);
                }
                Err(error) => {
                    // The transaction is aborted and rolled back when dropped
                    // on return: nothing of it counts.
                    self.uncount(&outcomes);
                    return Written::RolledBack(error);
                }
            }
        }
        match transaction.commit().await {
            Ok(()) => Written::Answered(outcomes),
            Err(e) => {
                let error = self.failed(&e, true);
                // Nothing of the chain counts as committed.
                self.uncount(&outcomes);
                Written::CommitFailed {
                    carried: error.clone(),
                    rest: error,
                }
            }
        }
    }

    /// The refusal of `change` if something it was computed on did not apply,
    /// counted with the conflicts (as the SQLite writer counts it).
    fn refusal(
        &self,
        overlay: &Overlay,
        dependents: &Dependents,
        change: &Change,
    ) -> Option<StoreError> {
        let refused = dependents.refusal(Some(overlay), change)?;
        self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
        Some(refused)
    }

    /// The commits `outcomes` counted, taken back: their transaction did not
    /// commit.
    fn uncount(&self, outcomes: &[Result<Committed, StoreError>]) {
        let counted = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
        self.counters.commits.fetch_sub(counted, Ordering::Relaxed);
    }
}
