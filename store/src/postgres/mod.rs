//! [`PostgresStore`]: the shared store. Several `pointlock` processes on one
//! database stay correct.
//!
//! # Why it is correct across processes
//!
//! Each instance's in-process FIFO lock orders its own requests and keeps
//! conflicts rare; across instances the database is the arbiter. Every change is
//! **one statement**: the conditional write of the balance and the insert of its
//! history row, in a data-modifying CTE, so PostgreSQL commits both or neither:
//!
//! ```sql
//! WITH changed AS (
//!   UPDATE user_point SET point = $new, update_millis = $t
//!   WHERE id = $user AND point = $expected RETURNING id)
//! INSERT INTO point_history (user_id, type, amount, time_millis)
//! SELECT id, $type, $amount, $t FROM changed RETURNING id
//! ```
//!
//! (from a balance of 0, the write is an `INSERT … ON CONFLICT DO UPDATE … WHERE
//! point = 0`). The `UPDATE` takes the row's lock; a second writer of the same
//! user waits for it and then re-evaluates its `WHERE` against the committed row
//! (READ COMMITTED's re-check), so a change computed from a balance that has
//! since changed updates no row, inserts no history, and is refused as a
//! conflict; the service re-reads and retries. Two first charges of a new user
//! race on the primary key the same way. No lost update, whatever the number of
//! instances; FIFO holds within each instance, and across instances only as far
//! as PostgreSQL's queue of waiters on the row lock gives it.
//!
//! Without pipelining, one statement is also one round trip and no explicit
//! transaction: nothing is held open across the network. The policy stays in Rust (core's `Policy`): the
//! SQL only compares the balance the policy was applied to.
//!
//! # Cancel safety and the guard
//!
//! A commit runs in a task of its own that owns the [`Change`], and with it the
//! user's guard: a caller that stops waiting does not cancel a statement that
//! may already be on its way, and its user stays locked in this instance until
//! the database has answered.
//!
//! # Pipelining (opt-in: [`PostgresOptions::pipeline`], `--pg-pipeline on`)
//!
//! Off by default, a user stays locked in this instance until its statement
//! has committed, so one busy user is bound by the commit round trip and WAL
//! flush of each change. Pipelined, the store is a [`PipelinedStore`] as the
//! SQLite store is (the sequenced state is the crate's `sequenced.rs`): a change is checked against the user's
//! sequenced state, put on the user's **chain** and its guard dropped; the
//! chain's task (one per user with work, spawned when the chain starts, gone
//! when it empties) takes everything queued and commits it in **one
//! transaction** (one WAL flush), each change still its one conditional
//! statement, in order. A failed statement aborts a PostgreSQL transaction, so
//! the chain then rolls back and runs each change alone. Answers wait for the COMMIT; refusals and replays computed
//! from sequenced state wait behind a barrier on the chain.
//!
//! Why opt-in: the sequenced state is this instance's. When another instance
//! writes a user this one has pipelined changes for, those changes (computed
//! on a balance that is no longer the stored one) are refused by their
//! condition after the user was released, so they are answered 503
//! `WRITE_CONFLICT` (nothing changed, retry) instead of being retried under the
//! lock. Correct either way; pipelining suits one instance, or instances that
//! each own their users.
//!
//! # Failures
//!
//! - No connection within the pool's wait (the database is down, unreachable,
//!   or every connection is busy): [`StoreErrorKind::Unavailable`](pointlock_core::StoreErrorKind::Unavailable) (503 with
//!   `Retry-After`), nothing changed. The pool opens new connections as the
//!   database comes back; no restart of `pointlock` is needed.
//! - The statement failed in the database (an error answer: a constraint, the
//!   statement timeout, a shutdown in progress): it was rolled back, nothing
//!   changed. Operator intervention and connection classes (57, 08) are
//!   `Unavailable`, a serialization failure or deadlock a `Conflict` (retried),
//!   anything else `Failed`.
//! - The connection broke while the statement was in flight (no answer): the
//!   statement may or may not have committed: [`StoreErrorKind::OutcomeUnknown`](pointlock_core::StoreErrorKind::OutcomeUnknown).
//!   So is a pipelined change whose chain stopped before answering.
//!
//! # Schema
//!
//! Versioned migrations, applied at start inside a session advisory lock, so N
//! instances starting together migrate once; a database whose schema is newer
//! than this build is refused.
//!
//! # Files
//!
//! - this file: [`PostgresStore`] and its [`PointStore`] and
//!   [`PipelinedStore`] methods;
//! - `options.rs`: [`PostgresOptions`];
//! - `connect.rs`: the pool, connecting, [`PgOpenError`];
//! - `schema.rs`: the migrations under the advisory lock;
//! - `sql.rs`: the statements;
//! - `error.rs`: the classification of database errors;
//! - `commit.rs`: the plain commit (one statement, in a task of its own);
//! - `chain.rs`: the pipelined per-user chains;
//! - `stats.rs`: [`PgStats`].

mod chain;
mod commit;
mod connect;
mod error;
mod options;
mod schema;
mod sql;
mod stats;

use std::sync::Arc;

use deadpool_postgres::Pool;
use pointlock_core::{
    BoxFuture, Change, Committed, IdempotencyKey, IdempotencyRecord, Pending, PipelinedStore,
    PointHistory, PointStore, ReadMark, SequencedRead, StoreError, Unsequenced, UserId, UserPoint,
};

use crate::rows::{corrupt_row, history_row, idempotency_row, to_i64};
use crate::sequenced;
use chain::Pipeline;
pub use connect::PgOpenError;
pub use options::PostgresOptions;
pub use schema::SCHEMA_VERSION;
use sql::{SELECT_HISTORIES, SELECT_KEY, SELECT_POINT, SWEEP_KEYS};
use stats::Counters;
pub use stats::PgStats;

/// The PostgreSQL store. See the [module docs](self).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    counters: Arc<Counters>,
    target: Arc<str>,
    /// The sequenced state and the per-user chains, when pipelined.
    pipeline: Option<Arc<Pipeline>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Host, port and database of the store (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Close the pool: later calls fail; connections close as they come back.
    pub fn close(&self) {
        self.pool.close();
    }
}

impl PointStore for PostgresStore {
    /// A connection within the connect timeout, and `SELECT 1` on it.
    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| self.failed(&e, false))?;
            Ok(())
        })
    }

    fn user_point(&self, id: UserId) -> BoxFuture<'_, Result<Option<UserPoint>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_POINT)
                .await
                .map_err(|e| self.failed(&e, false))?;
            let row = client
                .query_opt(&statement, &[&to_i64(id.get())])
                .await
                .map_err(|e| self.failed(&e, false))?;
            row.map(|row| {
                Ok(UserPoint {
                    id,
                    point: u64::try_from(row.get::<_, i64>(0))
                        .map_err(|_| corrupt_row(STORE, "negative balance", id))?,
                    update_millis: row.get(1),
                })
            })
            .transpose()
        })
    }

    fn histories(&self, id: UserId) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_HISTORIES)
                .await
                .map_err(|e| self.failed(&e, false))?;
            let rows = client
                .query(&statement, &[&to_i64(id.get())])
                .await
                .map_err(|e| self.failed(&e, false))?;
            rows.iter()
                .map(|row| history_row(STORE, id, (row.get(0), row.get(1), row.get(2), row.get(3))))
                .collect()
        })
    }

    fn idempotency_record(
        &self,
        id: UserId,
        key: &IdempotencyKey,
    ) -> BoxFuture<'_, Result<Option<IdempotencyRecord>, StoreError>> {
        let key = key.clone();
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_KEY)
                .await
                .map_err(|e| self.failed(&e, false))?;
            let row = client
                .query_opt(&statement, &[&to_i64(id.get()), &key.as_str()])
                .await
                .map_err(|e| self.failed(&e, false))?;
            row.map(|row| {
                let kind: &str = row.get(0);
                idempotency_row(STORE, id, &key, (kind, row.get(1), row.get(2), row.get(3)))
            })
            .transpose()
        })
    }

    fn sweep_idempotency(
        &self,
        expired_before: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let removed = client
                .execute(SWEEP_KEYS, &[&expired_before, &limit])
                .await
                .map_err(|e| self.failed(&e, true))?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }

    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        match &self.pipeline {
            // Through the sequenced state, its guard kept until answered.
            Some(pipeline) => {
                Box::pin(async move { self.sequence_on_chain(pipeline, change)?.await })
            }
            None => self.commit_in_task(change),
        }
    }

    fn pipelined(&self) -> Option<&dyn PipelinedStore> {
        self.pipeline
            .is_some()
            .then_some(self as &dyn PipelinedStore)
    }
}

impl PipelinedStore for PostgresStore {
    fn sequence(&self, change: Unsequenced) -> BoxFuture<'_, Result<Pending<'_>, StoreError>> {
        Box::pin(async move {
            match &self.pipeline {
                Some(pipeline) => self.sequence_on_chain(pipeline, change),
                None => Err(StoreError::new(
                    "this PostgreSQL store is not pipelined: commit the change instead",
                )),
            }
        })
    }

    fn sequenced_point(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<SequencedRead<'_, Option<UserPoint>>, StoreError>> {
        let overlay = self.pipeline.as_deref().map(|pipeline| &pipeline.overlay);
        Box::pin(sequenced::read(
            overlay,
            move |o| o.point(id),
            move || self.user_point(id),
            move |mark| self.settle(id, mark),
        ))
    }

    fn sequenced_idempotency_record<'a>(
        &'a self,
        id: UserId,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<SequencedRead<'a, Option<IdempotencyRecord>>, StoreError>> {
        let overlay = self.pipeline.as_deref().map(|pipeline| &pipeline.overlay);
        Box::pin(sequenced::read(
            overlay,
            move |o| o.key(id, key),
            move || self.idempotency_record(id, key),
            move |mark| self.settle(id, mark),
        ))
    }
}

impl PostgresStore {
    /// Resolve once everything a read of user `id` marked `mark` showed is
    /// durable; fail if some of it failed (see the crate's `sequenced.rs`).
    fn settle(&self, id: UserId, mark: ReadMark) -> BoxFuture<'_, Result<(), StoreError>> {
        let overlay = self.pipeline.as_deref().map(|pipeline| &pipeline.overlay);
        Box::pin(sequenced::settle(overlay, id, mark, move || async move {
            match &self.pipeline {
                Some(pipeline) => self.barrier(pipeline, id, mark).await,
                None => Ok(()),
            }
        }))
    }
}

/// The store's name in errors about corrupt rows.
const STORE: &str = "PostgreSQL";
