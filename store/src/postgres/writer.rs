//! The writers (see the [store's docs](super), "Batches"): a few tasks, each
//! taking the next batch of ready users from the [queue](super::queue),
//! writing it in one transaction and answering every item in order.

use std::sync::Arc;

use pointlock_core::{Committed, Decided, StoreError, StoreErrorKind, UserId};
use tokio::sync::oneshot;

use super::decide::Answer;
use super::queue::{Item, Queue, Taken};
use super::PostgresStore;

/// Start `count` writers for `store` (a handle that does not keep the store
/// open: they stop once it is closed or dropped and the queue has drained).
pub(super) fn spawn(store: &PostgresStore, count: usize) {
    for _ in 0..count.max(1) {
        let store = store.for_writer();
        tokio::spawn(async move {
            while let Some(batch) = store.queue.take().await {
                // Its own task: a panic while writing answers the batch's
                // callers "outcome unknown" (their replies dropped), frees
                // its users, and leaves this writer running.
                let writing = store.for_writer();
                let _ = tokio::spawn(async move { writing.run(batch).await }).await;
            }
        });
    }
}

/// Frees a batch's users in the queue when dropped, whatever happened.
struct Finish {
    queue: Arc<Queue>,
    users: Vec<(UserId, usize)>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        for &(user, answered) in &self.users {
            self.queue.finish(user, answered);
        }
    }
}

impl PostgresStore {
    /// Write `batch` and answer its items.
    async fn run(&self, batch: Vec<Taken>) {
        let _finish = Finish {
            queue: Arc::clone(&self.queue),
            users: batch.iter().map(|t| (t.user, t.items.len())).collect(),
        };
        let answers = self.write_batch(&batch).await;
        for (taken, answers) in batch.into_iter().zip(answers) {
            for (item, answer) in taken.items.into_iter().zip(answers) {
                answer_item(item, answer);
            }
        }
    }
}

/// Send `item` its `answer` (a caller that stopped waiting is not there to
/// take it; the request and its guard drop after the answer).
fn answer_item(item: Item, answer: Answer) {
    match (item, answer) {
        (Item::Request(request, reply), Answer::Request(answer)) => {
            let _ = reply.send(answer);
            drop(request);
        }
        (Item::Change(change, reply), Answer::Change(answer)) => {
            let _ = reply.send(answer);
            drop(change);
        }
        (Item::Barrier(reply), Answer::Barrier) => {
            let _ = reply.send(Ok(()));
        }
        (item, _) => answer_mismatch(item),
    }
}

/// An answer of the wrong shape: a bug; the caller learns the outcome is unknown.
fn answer_mismatch(item: Item) {
    let error = StoreError::with_kind(
        StoreErrorKind::OutcomeUnknown,
        "the PostgreSQL writer mismatched an answer; the outcome is unknown (read the history)",
    );
    match item {
        Item::Request(_, reply) => send(reply, Err::<Decided, _>(error)),
        Item::Change(_, reply) => send(reply, Err::<Committed, _>(error)),
        Item::Barrier(reply) => send(reply, Err(error)),
    }
}

fn send<T>(reply: oneshot::Sender<Result<T, StoreError>>, answer: Result<T, StoreError>) {
    let _ = reply.send(answer);
}
