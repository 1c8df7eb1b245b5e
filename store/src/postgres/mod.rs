//! [`PostgresStore`]: the shared store. Several `pointlock` processes on one
//! database serve the same users, in order, without errors from contention.
//!
//! # Batches: decided in the database, at each request's place
//!
//! The store is a [`DecidingStore`]: the service hands it each mutation as a
//! [`Request`] (what the client asked for, and the policy), under the user's
//! lock, and the store decides it. Each user's placed work waits in the
//! store's queue in the order it was placed; the **writers**
//! ([`PostgresOptions::writers`], one by default) each take the next batch of
//! ready users (up to [`PostgresOptions::batch_users`], each with
//! up to [`PostgresOptions::batch_per_user`] of its items) and run one
//! transaction for all of them:
//!
//! 1. `SELECT … WHERE id = ANY($ids) ORDER BY id FOR UPDATE`: the users' rows,
//!    locked in id order, so batches of different instances never deadlock;
//!    and the records of the batch's idempotency keys;
//! 2. each user's items in order, decided by the core
//!    ([`Request::decide`]: a live key record answers, else the policy) on the
//!    balance the row holds and the items before left;
//! 3. the new balances, first rows, key records and history rows in one
//!    data-modifying statement over `unnest` arrays, sent together with
//! 4. `COMMIT` (one WAL flush for the whole batch); then every item is
//!    answered. Two round trips per batch: step 1 with its BEGIN, steps 3
//!    and 4.
//!
//! Another instance writing the same user only waits for the row lock, and
//! this batch is decided on what it committed: contention orders, it never
//! refuses. No caller is answered before the COMMIT, so deciding at that
//! moment is linearizable; a refusal or a replay is decided on the locked,
//! committed row too, never on a view of this instance alone.
//!
//! Within one instance a user is in at most one transaction at a time, and
//! its items are taken in the order they were placed, so FIFO per user holds;
//! across instances their requests interleave in the order the row lock
//! grants them.
//!
//! # Failures
//!
//! - A deadlock, a serialization failure, or a user's first row made by
//!   another instance meanwhile: rolled back and run again, up to 16 times
//!   (`ATTEMPTS_MAX` in `transaction.rs`); only past that are the
//!   items answered 503 `WRITE_CONFLICT` (nothing changed), counted in
//!   [`PgStats::fallbacks`].
//! - A statement refused (nothing of the batch committed): each user is run
//!   alone, so one user's failure does not fail the others.
//! - A balance that does not fit the signed 64-bit column fails that request
//!   alone (decided in Rust, nothing written for it).
//! - No connection within the pool's wait (the database is down, unreachable,
//!   or every connection is busy): [`StoreErrorKind::Unavailable`](pointlock_core::StoreErrorKind::Unavailable) (503 with
//!   `Retry-After`), nothing changed. The pool opens new connections as the
//!   database comes back; no restart of `pointlock` is needed.
//! - The connection broke before the COMMIT was sent: rolled back, nothing
//!   changed (`Unavailable`). While the COMMIT was in flight: the outcome is
//!   unknown ([`StoreErrorKind::OutcomeUnknown`](pointlock_core::StoreErrorKind::OutcomeUnknown)).
//!
//! # The bound
//!
//! The queue holds at most [`PostgresOptions::queue_max`] items, and
//! [`PostgresOptions::user_queue_max`] of one user; past either, a request is
//! refused before it is placed, 503 `STORE_OVERLOADED`, nothing changed.
//!
//! # The guard, and pipelining
//!
//! With [`PostgresOptions::pipeline`] (the default) a request's user is
//! released once the request is placed: the user's next request is placed
//! behind it while the batch commits, and a burst of one user's requests
//! shares one transaction. Off, the store keeps the request's guard until it
//! has answered, as a plain store does. A request once placed is decided
//! whatever happens to its caller.
//!
//! A plain [`commit`](PointStore::commit) of a computed [`Change`] goes
//! through the same queue, checked against its condition instead of decided.
//!
//! # Durable
//!
//! Every session runs with `synchronous_commit = on`, whatever the server's or
//! the database's setting: an answer is given only after its COMMIT is
//! flushed. The store refuses to open if a session does not show it.
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
//!   [`DecidingStore`] methods;
//! - `options.rs`: [`PostgresOptions`];
//! - `connect.rs`: the pool, connecting, [`PgOpenError`];
//! - `schema.rs`: the migrations under the advisory lock;
//! - `sql.rs`: the statements;
//! - `error.rs`: the classification of database errors;
//! - `queue.rs`: the bounded queue of placed work;
//! - `writer.rs`: the writer tasks;
//! - `transaction.rs`: one batch's transaction, its retries;
//! - `decide.rs`: a batch's decisions and the columns it writes;
//! - `stats.rs`: [`PgStats`].

mod connect;
mod decide;
mod error;
mod options;
mod queue;
mod schema;
mod sql;
mod stats;
mod transaction;
mod writer;

use std::sync::Arc;

use deadpool_postgres::Pool;
use pointlock_core::{
    BoxFuture, Change, Committed, DecidingStore, Decision, IdempotencyKey, IdempotencyRecord,
    PointHistory, PointStore, Request, StoreError, UserId, UserPoint,
};
use tokio::sync::oneshot;

use crate::reply;
use crate::rows::{corrupt_row, history_row, idempotency_row, to_i64};
pub use connect::PgOpenError;
pub use options::PostgresOptions;
use queue::{Item, Queue};
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
    queue: Arc<Queue>,
    /// Release a request's user once it is placed.
    pipeline: bool,
    /// Test-util fault: a batch with this amount panics.
    #[cfg(any(test, feature = "test-util"))]
    panic_amount: Option<u64>,
    /// Held by every handle but the writers': the last one dropped closes
    /// the queue, and the writers stop once it has drained.
    _open: Option<Arc<Open>>,
}

/// Closes the queue when the last handle outside the writers drops.
struct Open(Arc<Queue>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.close();
    }
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

    /// Take no more changes (later ones fail, nothing changed), let the
    /// writers answer what is placed, and close the pool: connections close
    /// as they come back.
    pub fn close(&self) {
        self.queue.close();
        self.pool.close();
    }

    /// A handle for a writer: it does not keep the store open.
    fn for_writer(&self) -> Self {
        Self {
            _open: None,
            ..self.clone()
        }
    }

    /// Place `item` in `user`'s order.
    fn place(&self, user: UserId, item: Item) -> Result<(), StoreError> {
        self.queue.place(user, item).inspect_err(|e| {
            if e.kind() == pointlock_core::StoreErrorKind::Overloaded {
                self.counters
                    .overloaded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
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
        self.histories_page(id, 0, usize::MAX)
    }

    fn histories_page(
        &self,
        id: UserId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PointHistory>, StoreError>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(async move {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SELECT_HISTORIES)
                .await
                .map_err(|e| self.failed(&e, false))?;
            let rows = client
                .query(&statement, &[&to_i64(id.get()), &after, &limit])
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

    /// Through the queue, checked against the change's condition in its
    /// batch; the change (and its guard) kept until answered.
    fn commit(&self, change: Change) -> BoxFuture<'_, Result<Committed, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let placed = self.place(change.user_id(), Item::Change(change, reply));
        Box::pin(async move {
            placed?;
            reply::received(answer, WRITER).await
        })
    }

    fn deciding(&self) -> Option<&dyn DecidingStore> {
        Some(self)
    }
}

impl DecidingStore for PostgresStore {
    fn submit(&self, mut request: Request) -> BoxFuture<'_, Result<Decision<'_>, StoreError>> {
        let user = request.user_id();
        if self.pipeline {
            // The caller holds the user until this returns: the order is
            // fixed by the placement below.
            request.release_guard();
        }
        let (reply, answer) = oneshot::channel();
        let placed = self.place(user, Item::Request(request, reply));
        Box::pin(async move {
            placed?;
            let decision: Decision<'_> = Box::pin(reply::received(answer, WRITER));
            Ok(decision)
        })
    }

    fn barrier(
        &self,
        id: UserId,
    ) -> BoxFuture<'_, Result<BoxFuture<'_, Result<(), StoreError>>, StoreError>> {
        let placed = if self.queue.is_idle(id) {
            // Nothing placed before it: passed at once.
            Ok(None)
        } else {
            let (reply, answer) = oneshot::channel();
            self.place(id, Item::Barrier(reply)).map(|()| Some(answer))
        };
        Box::pin(async move {
            let passed: BoxFuture<'_, Result<(), StoreError>> = match placed? {
                None => Box::pin(std::future::ready(Ok(()))),
                Some(answer) => Box::pin(reply::received(answer, WRITER)),
            };
            Ok(passed)
        })
    }
}

/// Who answers placed work, in errors.
const WRITER: &str = "the PostgreSQL writer";

/// The store's name in errors about corrupt rows.
const STORE: &str = "PostgreSQL";
