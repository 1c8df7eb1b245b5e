//! The writer thread: one writable connection, group commit, the conditional
//! write of each change, and fail-stop after a failed COMMIT.
//!
//! # Group commit
//!
//! The writer takes the first queued [`Job`], then everything else already
//! queued, and keeps collecting, looking at the queue every
//! [`SqliteOptions::batch_idle`](super::SqliteOptions::batch_idle), until a look
//! finds nothing new, the batch is full, or the batch wait has passed. It writes
//! the whole batch in **one** transaction (per change: the conditional write of
//! the balance, then the history row), commits (one fsync for the batch), brings
//! the balance cache up to date, and only then, change by change, releases the
//! user's guard that travelled with the change and answers its caller.
//!
//! # The condition
//!
//! A change computed from balance `b` writes its balance only if the stored
//! balance is still `b` (an absent row counts as 0): `UPDATE … WHERE point = b`,
//! or, for `b = 0`, an insert whose conflict clause updates only `WHERE point =
//! 0`. Exactly one row changed, or the change is refused as a conflict: its
//! history row is not written and the rest of the batch goes on. Two changes of
//! one user in one batch (possible only when the lock was bypassed) are thus
//! checked against each other inside the transaction.
//!
//! # Idempotency records
//!
//! A change made with a key first checks the user's record for that key
//! (`SELECT` inside the transaction: the writer is the only writer, so nothing
//! can slip in between): a live one refuses the change as a conflict before
//! anything is written. Otherwise, after the balance and the history row, the
//! record is written (replacing an expired one) in the same transaction, so a
//! crash keeps both or neither. Sweeps of expired records come through the same
//! queue and run between batches, each in a transaction of its own.
//!
//! # Failures
//!
//! - A statement fails (a balance that does not fit, a constraint): the
//!   transaction is rolled back, nothing of it was made durable, and each change
//!   is retried alone, so one bad change does not fail innocent ones.
//! - **The COMMIT fails** (an I/O error or a failed fsync of the log): the store
//!   **fails stop**. Nothing is retried. After a failed fsync the kernel may have
//!   dropped the dirty pages and marked them clean, so a retry could "succeed"
//!   over data that is not on disk, and WAL frames written before the failure may
//!   still reappear at the next start (PostgreSQL's fsync lesson, 2018). The
//!   batch's callers get [`StoreErrorKind::OutcomeUnknown`]; every later change,
//!   queued or new, gets [`StoreErrorKind::Unavailable`] until the process is
//!   restarted and SQLite recovers the file from what is really on disk. The
//!   writable connection is never used for a write or closed again (rusqlite
//!   only rolls back the failed transaction; closing it would
//!   checkpoint). Reads go on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pointlock_core::{Change, Committed, StoreError, StoreErrorKind};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::cache::BalanceCache;
use crate::histogram::{DurationHistogram, HistogramSnapshot};
use crate::store::sequenced::{self, Dependents, Overlay};
use crate::store::to_i64;

/// A first balance, or one computed from 0: insert it, or update a row whose
/// balance is still 0 (`?4` is the expected 0; `NULL` only in negative controls).
const UPSERT_POINT_IF: &str =
    "INSERT INTO user_point (id, point, update_millis) VALUES (?1, ?2, ?3)
     ON CONFLICT (id) DO UPDATE SET point = excluded.point, update_millis = excluded.update_millis
     WHERE ?4 IS NULL OR user_point.point = ?4";
/// A balance computed from a positive one: update the row only if it still holds it.
const UPDATE_POINT_IF: &str =
    "UPDATE user_point SET point = ?2, update_millis = ?3 WHERE id = ?1 AND point = ?4";
const SELECT_STORED_POINT: &str = "SELECT point FROM user_point WHERE id = ?1";
const INSERT_HISTORY: &str =
    "INSERT INTO point_history (user_id, type, amount, time_millis) VALUES (?1, ?2, ?3, ?4)";
const SELECT_KEY_MADE: &str = "SELECT time_millis FROM idempotency WHERE user_id = ?1 AND key = ?2";
/// The record of a keyed change; replaces an expired one (checked just before).
const UPSERT_KEY: &str = "INSERT INTO idempotency (user_id, key, type, amount, point, time_millis)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (user_id, key) DO UPDATE SET type = excluded.type, amount = excluded.amount,
         point = excluded.point, time_millis = excluded.time_millis";
/// One bounded step of the sweep.
const SWEEP_KEYS: &str = "DELETE FROM idempotency WHERE (user_id, key) IN (
         SELECT user_id, key FROM idempotency WHERE time_millis <= ?1 LIMIT ?2)";

/// What the writer is sent: a change, a step of the sweep, or a barrier.
pub(super) enum Work {
    Change(Job),
    Sweep(Sweep),
    Barrier(Barrier),
}

/// Answer once every change sent before this is answered: `Ok` if none of the
/// changes a read marked `mark` showed failed (see sequenced.rs).
pub(super) struct Barrier {
    pub(super) user: pointlock_core::UserId,
    pub(super) mark: pointlock_core::ReadMark,
    pub(super) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Remove at most `limit` idempotency records made at or before `expired_before`.
pub(super) struct Sweep {
    pub(super) expired_before: i64,
    pub(super) limit: usize,
    pub(super) reply: oneshot::Sender<Result<usize, StoreError>>,
}

/// A change on its way to the writer, with the caller's answer channel. The
/// change holds its user's guard: dropping the job (after answering) releases it.
pub(super) struct Job {
    pub(super) change: Change,
    pub(super) reply: oneshot::Sender<Result<Committed, StoreError>>,
    /// A place in the bounded queue, given back once the job is answered.
    pub(super) _queued: OwnedSemaphorePermit,
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
    /// Batches that failed in a statement and were retried one change at a time.
    pub batches_retried: u64,
    /// Changes that failed (each answered with its own store error).
    pub ops_failed: u64,
    /// Changes refused by their condition (the balance had changed since it was
    /// read); 0 while every writer goes through the lock.
    pub conflicts: u64,
    /// Whether the store has failed stop after a failed COMMIT (writes refused
    /// until restart).
    pub stopped: bool,
    /// Pipelined: answers computed from sequenced state (refusals, replays)
    /// that waited, behind a barrier in the writer's queue, for that state to
    /// be durable.
    pub barriers: u64,
    /// Batch sizes by powers of two: 1, 2-3, 4-7, … 256+.
    pub batch_ops_log2: [u64; 9],
    /// How long each batch's transaction took, `BEGIN IMMEDIATE` to the end of
    /// its COMMIT (the fsync included), one count per batch.
    pub commit_duration: HistogramSnapshot,
}

/// The writer's counters, shared with the store.
#[derive(Default)]
pub(super) struct Stats {
    batches: AtomicU64,
    ops: AtomicU64,
    batch_ops_max: AtomicU64,
    batches_retried: AtomicU64,
    ops_failed: AtomicU64,
    conflicts: AtomicU64,
    pub(super) barriers: AtomicU64,
    batch_ops_log2: [AtomicU64; 9],
    commit_duration: DurationHistogram,
}

impl Stats {
    fn record_batch(&self, ops: usize) {
        let ops = ops as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.batch_ops_max.fetch_max(ops, Ordering::Relaxed);
        let bucket = (ops.max(1).ilog2() as usize).min(self.batch_ops_log2.len() - 1);
        self.batch_ops_log2[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self, stopped: bool) -> CommitStats {
        CommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            batch_ops_max: self.batch_ops_max.load(Ordering::Relaxed),
            batches_retried: self.batches_retried.load(Ordering::Relaxed),
            ops_failed: self.ops_failed.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            stopped,
            barriers: self.barriers.load(Ordering::Relaxed),
            batch_ops_log2: std::array::from_fn(|i| self.batch_ops_log2[i].load(Ordering::Relaxed)),
            commit_duration: self.commit_duration.snapshot(),
        }
    }
}

/// Set once, when a COMMIT fails: the store takes no more changes.
#[derive(Default)]
pub(super) struct FailStop(AtomicBool);

impl FailStop {
    pub(super) fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The error of every change refused because the store has failed stop.
pub(super) fn unavailable() -> StoreError {
    StoreError::with_kind(
        StoreErrorKind::Unavailable,
        "the SQLite store stopped taking changes after a failed commit; restart pointlock \
         (nothing was changed)",
    )
}

#[derive(Clone, Copy)]
pub(super) struct Batching {
    pub(super) ops_max: usize,
    pub(super) wait: Duration,
    pub(super) idle: Duration,
}

/// What the writer thread shares with the store.
pub(super) struct Writer {
    pub(super) stats: Arc<Stats>,
    pub(super) cache: Option<Arc<BalanceCache>>,
    /// The sequenced state, when pipelined: told of every answer.
    pub(super) overlay: Option<Arc<Overlay>>,
    /// Fault injection (unit tests): the writer waits here before each batch.
    #[cfg(test)]
    pub(super) gate: Option<Arc<super::Gate>>,
    /// Fault injection (unit tests): changes of this amount fail in a statement.
    #[cfg(test)]
    pub(super) fail_amount: Option<Arc<AtomicU64>>,
    pub(super) stop: Arc<FailStop>,
    /// Fault injection (unit tests): `PRAGMA max_page_count` before each batch.
    #[cfg(test)]
    pub(super) page_limit: Option<Arc<AtomicU64>>,
}

/// Why a batch was not committed.
enum Failure {
    /// A statement failed; the transaction was rolled back: nothing is durable.
    Statement(StoreError),
    /// The COMMIT failed: whether the batch is durable is unknown.
    Commit(StoreError),
}

impl Writer {
    /// The writer thread: batch, write, commit, answer; until the channel closes
    /// and everything queued has been answered.
    pub(super) fn run(self, mut conn: Connection, jobs: &mpsc::Receiver<Work>, batching: Batching) {
        let mut batch = Vec::with_capacity(batching.ops_max);
        let mut sweeps = Vec::new();
        let mut barriers = Vec::new();
        while let Ok(first) = jobs.recv() {
            match first {
                Work::Change(job) => batch.push(job),
                Work::Sweep(sweep) => sweeps.push(sweep),
                Work::Barrier(barrier) => barriers.push(barrier),
            }
            collect(jobs, &mut batch, &mut sweeps, &mut barriers, batching);
            if !batch.is_empty() {
                self.commit_batch(&mut conn, &mut batch);
            }
            // Every change sent before these barriers has been answered.
            for barrier in barriers.drain(..) {
                self.pass(barrier);
            }
            for sweep in sweeps.drain(..) {
                self.sweep(&mut conn, sweep);
            }
        }
        if self.stop.is_stopped() {
            // Closing would checkpoint the log into the database file: after a
            // failed COMMIT, leave the file for SQLite's recovery at the next start.
            std::mem::forget(conn);
        }
    }

    /// Commit `batch` in one transaction and answer every job (see the module
    /// docs for what happens on failure).
    fn commit_batch(&self, conn: &mut Connection, batch: &mut Vec<Job>) {
        if self.stop.is_stopped() {
            for job in batch.drain(..) {
                self.answer(job, Err(unavailable()));
            }
            return;
        }
        #[cfg(test)]
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        #[cfg(test)]
        if let Some(limit) = &self.page_limit {
            let pages = i64::try_from(limit.load(Ordering::SeqCst)).unwrap_or(i64::MAX);
            // The pragma answers with the new maximum: read it, or it is not run.
            let _ = conn.pragma_update_and_check(None, "max_page_count", pages, |_| Ok(()));
        }
        self.stats.record_batch(batch.len());
        let changes: Vec<&Change> = batch.iter().map(|job| &job.change).collect();
        let started = Instant::now();
        #[cfg(test)]
        let fail_amount = self
            .fail_amount
            .as_deref()
            .map_or(0, |user| user.load(Ordering::SeqCst));
        #[cfg(not(test))]
        let fail_amount = 0;
        let overlay = self.overlay.as_deref();
        let written = write(conn, &changes, overlay, fail_amount);
        self.stats.commit_duration.observe(started.elapsed());
        match written {
            Ok(outcomes) => {
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    self.answer(job, outcome);
                }
            }
            Err(Failure::Commit(error)) => {
                let unknown = batch.len();
                self.fail_stop(error, batch, unknown);
            }
            Err(Failure::Statement(error)) if batch.len() == 1 => {
                for job in batch.drain(..) {
                    self.answer(job, Err(error.clone()));
                }
            }
            Err(Failure::Statement(error)) => {
                self.stats.batches_retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, ops = batch.len(), "SQLite batch failed in a statement (rolled back); retrying each change alone");
                let mut jobs = batch.drain(..);
                while let Some(job) = jobs.next() {
                    match write(conn, &[&job.change], overlay, fail_amount) {
                        Ok(mut outcome) => self.answer(job, outcome.remove(0)),
                        Err(Failure::Statement(error)) => self.answer(job, Err(error)),
                        Err(Failure::Commit(error)) => {
                            let mut left: Vec<Job> = std::iter::once(job).chain(jobs).collect();
                            return self.fail_stop(error, &mut left, 1);
                        }
                    }
                }
            }
        }
    }

    /// Answer a barrier (every change sent before it is answered).
    fn pass(&self, barrier: Barrier) {
        let holds = !self.stop.is_stopped()
            && self
                .overlay
                .as_deref()
                .is_none_or(|overlay| overlay.barrier_holds(barrier.user, barrier.mark));
        let answer = if holds {
            Ok(())
        } else if self.stop.is_stopped() {
            Err(unavailable())
        } else {
            Err(sequenced::failed_under())
        };
        let _ = barrier.reply.send(answer);
    }

    /// One step of the sweep of expired idempotency records, in a transaction
    /// of its own. A failed COMMIT fails stop, as for a batch.
    fn sweep(&self, conn: &mut Connection, sweep: Sweep) {
        if self.stop.is_stopped() {
            let _ = sweep.reply.send(Err(unavailable()));
            return;
        }
        let failed = |e: rusqlite::Error| StoreError::new(format!("SQLite sweep failed: {e}"));
        let limit = i64::try_from(sweep.limit).unwrap_or(i64::MAX);
        let result = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed)
            .and_then(|tx| {
                let removed = tx
                    .prepare_cached(SWEEP_KEYS)
                    .and_then(|mut stmt| stmt.execute(params![sweep.expired_before, limit]))
                    .map_err(failed)?;
                tx.commit().map(|()| removed).map_err(|e| {
                    StoreError::with_kind(
                        StoreErrorKind::OutcomeUnknown,
                        format!("SQLite COMMIT of a sweep failed: {e}"),
                    )
                })
            });
        if let Err(error) = &result {
            if error.kind() == StoreErrorKind::OutcomeUnknown {
                self.fail_stop(error.clone(), &mut Vec::new(), 0);
            } else {
                tracing::error!(%error, "SQLite sweep of idempotency records failed");
            }
        }
        let _ = sweep.reply.send(result);
    }

    /// A COMMIT failed: stop taking changes. The first `unknown` jobs were in the
    /// failed COMMIT (durable or not: unknown); the rest were never written.
    fn fail_stop(&self, error: StoreError, batch: &mut Vec<Job>, unknown: usize) {
        self.stop.stop();
        tracing::error!(%error, "SQLite COMMIT failed: the store stops taking changes until restart (fail-stop; the batch is not retried)");
        let unknown_error = StoreError::with_kind(
            StoreErrorKind::OutcomeUnknown,
            format!(
                "{}; whether this change is durable is unknown (read the history after a \
                 restart); the store stopped taking changes",
                error.message()
            ),
        );
        for (index, job) in batch.drain(..).enumerate() {
            let error = if index < unknown {
                unknown_error.clone()
            } else {
                unavailable()
            };
            self.answer(job, Err(error));
        }
    }

    /// Bring the cache up to date with `result`, release the change's guard,
    /// then answer the caller. The guard goes after the cache (the user's next
    /// request reads the cache) and before the answer, so a caller that has its
    /// answer no longer waits on the writer for its user's lock (its own guard
    /// still holds the user until it is done).
    fn answer(&self, job: Job, result: Result<Committed, StoreError>) {
        let user = job.change.user_id();
        match &result {
            Ok(committed) => {
                if let Some(cache) = &self.cache {
                    cache.put(&committed.user_point);
                }
            }
            Err(error) => {
                // SQLite alone knows the balance now (after a conflict, the cached
                // one may be what the stale change was computed from).
                if let Some(cache) = &self.cache {
                    cache.forget(user);
                }
                if error.is_conflict() {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, %user, "SQLite change refused by its condition");
                } else {
                    self.stats.ops_failed.fetch_add(1, Ordering::Relaxed);
                    // The caller's 5xx is logged with its request id by the
                    // request-id layer; the store-wide failures (fail-stop, a
                    // failed batch) have lines of their own above.
                    tracing::debug!(%error, %user, "SQLite change failed");
                }
            }
        }
        // The sequenced state learns the outcome after the cache (a reader that
        // finds no entry reads the cache), before the caller.
        if let Some(overlay) = &self.overlay {
            overlay.answered(user, job.change.idempotency_key(), result.is_ok());
        }
        let Job {
            change,
            reply,
            _queued,
        } = job;
        drop(change);
        let _ = reply.send(result);
    }
}

/// Add queued jobs to `batch` until it is full, the batch wait is over, or a
/// pause of the idle time brought nothing new.
///
/// The writer sleeps between looks at the queue instead of blocking on it:
/// a blocked receiver is woken by every send, and those wake-ups (one context
/// switch per change) cost more CPU than the pauses on a small machine.
fn collect(
    jobs: &mpsc::Receiver<Work>,
    batch: &mut Vec<Job>,
    sweeps: &mut Vec<Sweep>,
    barriers: &mut Vec<Barrier>,
    batching: Batching,
) {
    let deadline = Instant::now() + batching.wait;
    let mut paused = false;
    loop {
        let before = batch.len();
        while batch.len() < batching.ops_max {
            match jobs.try_recv() {
                Ok(Work::Change(job)) => batch.push(job),
                Ok(Work::Sweep(sweep)) => sweeps.push(sweep),
                Ok(Work::Barrier(barrier)) => barriers.push(barrier),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let quiet = paused && batch.len() == before;
        if batch.len() >= batching.ops_max || left.is_zero() || quiet {
            return;
        }
        std::thread::sleep(batching.idle.min(left));
        paused = true;
    }
}

/// Write `changes` in one transaction: each change applied or refused by its
/// condition, and the transaction committed; or, on any error, nothing. With
/// the sequenced state (`overlay`: pipelined), a change computed on one that
/// did not apply is refused unwritten (see `sequenced.rs`).
///
/// `fail_amount` (unit tests' fault injection; 0: none): a change of that
/// amount fails as a statement would.
fn write(
    conn: &mut Connection,
    changes: &[&Change],
    overlay: Option<&Overlay>,
    fail_amount: u64,
) -> Result<Vec<Result<Committed, StoreError>>, Failure> {
    let failed = |e: rusqlite::Error| {
        Failure::Statement(StoreError::new(format!("SQLite write failed: {e}")))
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed)?;
    let mut outcomes = Vec::with_capacity(changes.len());
    {
        // Prepared once per batch (and kept by the connection between batches).
        let mut statements = Statements {
            upsert_point_if: tx.prepare_cached(UPSERT_POINT_IF).map_err(failed)?,
            update_point_if: tx.prepare_cached(UPDATE_POINT_IF).map_err(failed)?,
            insert_history: tx.prepare_cached(INSERT_HISTORY).map_err(failed)?,
            select_key_made: tx.prepare_cached(SELECT_KEY_MADE).map_err(failed)?,
            upsert_key: tx.prepare_cached(UPSERT_KEY).map_err(failed)?,
        };
        let mut dependents = Dependents::default();
        for change in changes {
            if let Some(refused) = dependents.refusal(overlay, change) {
                outcomes.push(Err(refused));
                continue;
            }
            if change.amount().get() == fail_amount {
                return Err(Failure::Statement(StoreError::new(
                    "SQLite write failed: injected fault (unit tests)",
                )));
            }
            let outcome = apply(&tx, &mut statements, change).map_err(Failure::Statement)?;
            if outcome.is_err() {
                dependents.broke(change);
            }
            outcomes.push(outcome);
        }
    }
    // Dropping `tx` on an early return rolls back.
    tx.commit().map_err(|e| {
        Failure::Commit(StoreError::with_kind(
            StoreErrorKind::OutcomeUnknown,
            format!("SQLite COMMIT failed: {e}"),
        ))
    })?;
    Ok(outcomes)
}

/// The writer's statements, prepared for one transaction.
struct Statements<'tx> {
    upsert_point_if: rusqlite::CachedStatement<'tx>,
    update_point_if: rusqlite::CachedStatement<'tx>,
    insert_history: rusqlite::CachedStatement<'tx>,
    select_key_made: rusqlite::CachedStatement<'tx>,
    upsert_key: rusqlite::CachedStatement<'tx>,
}

/// One change inside the open transaction: the conditional balance write, then
/// (if it applied) its history row. `Ok(Err(conflict))` when the condition did
/// not hold (nothing written); `Err` when a statement failed (the caller rolls
/// the transaction back).
fn apply(
    tx: &Connection,
    statements: &mut Statements<'_>,
    change: &Change,
) -> Result<Result<Committed, StoreError>, StoreError> {
    let failed = |e: rusqlite::Error| StoreError::new(format!("SQLite write failed: {e}"));
    let point = i64::try_from(change.point()).map_err(|_| {
        StoreError::new(format!(
            "balance {} does not fit the SQLite store (at most 9223372036854775807)",
            change.point()
        ))
    })?;
    let user = to_i64(change.user_id().get());
    if let Some(key) = change.idempotency_key() {
        let made: Option<i64> = statements
            .select_key_made
            .query_row(params![user, key.as_str()], |row| row.get(0))
            .optional()
            .map_err(failed)?;
        if !change.key_holds_for(made) {
            return Ok(Err(change.key_conflict()));
        }
    }
    let expected = change.expected_point().map(to_i64);
    let written = match expected {
        Some(expected) if expected > 0 => {
            statements
                .update_point_if
                .execute(params![user, point, change.time_millis(), expected])
        }
        _ => {
            statements
                .upsert_point_if
                .execute(params![user, point, change.time_millis(), expected])
        }
    }
    .map_err(failed)?;
    if written != 1 {
        // Refused: report what is stored (an absent row counts as 0).
        let stored: Option<i64> = tx
            .query_row(SELECT_STORED_POINT, params![user], |row| row.get(0))
            .optional()
            .map_err(failed)?;
        let stored = stored.map_or(0, |point| u64::try_from(point).unwrap_or(0));
        return Ok(Err(change.conflict(stored)));
    }
    statements
        .insert_history
        .execute(params![
            user,
            change.kind().as_str(),
            to_i64(change.amount().get()),
            change.time_millis()
        ])
        .map_err(failed)?;
    let id = u64::try_from(tx.last_insert_rowid())
        .map_err(|_| StoreError::new("SQLite assigned a negative history id"))?;
    if let Some(record) = change.idempotency_record() {
        statements
            .upsert_key
            .execute(params![
                user,
                record.key.as_str(),
                record.kind.as_str(),
                to_i64(record.amount.get()),
                point,
                record.time_millis
            ])
            .map_err(failed)?;
    }
    Ok(Ok(change.committed(id)))
}
