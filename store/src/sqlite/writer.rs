//! The writer thread: one writable connection, group commit, and fail-stop
//! after a failed COMMIT. The write of a batch is `write.rs`.
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
//! user's guard that travelled with the change and answers its caller. Sweeps
//! of expired idempotency records come through the same queue and run between
//! batches, each in a transaction of its own.
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pointlock_core::{Change, Committed, IdempotencyKey, StoreError, StoreErrorKind, UserId};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::cache::BalanceCache;
use super::stats::Stats;
use super::write::{write, Failure};
use crate::batch::{BatchPlan, Written};
use crate::sequenced::{self, Overlay};

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

/// Set once, when a COMMIT fails: the store takes no more changes.
#[derive(Default)]
pub(super) struct FailStop(AtomicBool);

impl FailStop {
    pub(super) fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub(super) fn stop(&self) {
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
    pub(super) stop: Arc<FailStop>,
    /// Jobs answered so far (a batch's jobs are answered in order).
    pub(super) answered: AtomicU64,
    /// What tests plant in the writer.
    #[cfg(any(test, feature = "test-util"))]
    pub(super) faults: super::planted::WriterFaults,
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
                self.commit_batch_or_stop(&mut conn, &mut batch);
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

    /// [`commit_batch`](Self::commit_batch), surviving a panic in it (a bug):
    /// the store fails stop (whatever the batch wrote is unknown), the jobs
    /// it had not answered are dropped, so their callers learn the outcome
    /// is unknown, and the sequenced state counts them as failed, so no
    /// user's entry stays pending. The thread goes on answering what comes
    /// next as a stopped store does.
    fn commit_batch_or_stop(&self, conn: &mut Connection, batch: &mut Vec<Job>) {
        let sent: Vec<(UserId, Option<IdempotencyKey>)> = batch
            .iter()
            .map(|job| (job.change.user_id(), job.change.idempotency_key().cloned()))
            .collect();
        let answered_before = self.answered.load(Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.commit_batch(conn, batch)
        }));
        if outcome.is_ok() {
            return;
        }
        batch.clear();
        self.fail_stop(&StoreError::new(
            "the SQLite writer panicked while writing a batch",
        ));
        let answered = self.answered.load(Ordering::Relaxed) - answered_before;
        let answered = usize::try_from(answered).unwrap_or(usize::MAX);
        for (user, key) in sent.iter().skip(answered) {
            if let Some(cache) = &self.cache {
                cache.forget(*user);
            }
            if let Some(overlay) = &self.overlay {
                overlay.answered(*user, key.as_ref(), false);
            }
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
        #[cfg(any(test, feature = "test-util"))]
        self.faults.before_batch(conn);
        self.stats.record_batch(batch.len());
        let mut plan = BatchPlan::new(batch.len());
        let mut jobs: VecDeque<Job> = batch.drain(..).collect();
        while let Some(next) = plan.next() {
            // Every decided job has been answered: the next ones are in front.
            let changes: Vec<&Change> = jobs
                .iter()
                .take(next.len())
                .map(|job| &job.change)
                .collect();
            let started = Instant::now();
            let written = self.write(conn, &changes);
            if !plan.retrying_alone() {
                self.stats.commit_duration.observe(started.elapsed());
            }
            let written = match written {
                Ok(outcomes) => Written::Answered(outcomes),
                Err(Failure::Statement(error)) => Written::RolledBack(error),
                Err(Failure::Commit(error)) => Written::CommitFailed {
                    carried: self.fail_stop(&error),
                    rest: unavailable(),
                },
            };
            if let Some(error) = plan.written(written) {
                self.stats.batches_retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %error,
                    ops = jobs.len(),
                    "SQLite batch failed in a statement (rolled back); retrying each change alone"
                );
            }
            for outcome in plan.decided() {
                if let Some(job) = jobs.pop_front() {
                    self.answer(job, outcome);
                }
            }
        }
        for (job, outcome) in jobs.into_iter().zip(plan.finish()) {
            self.answer(job, outcome);
        }
    }

    /// [`write`] `changes`, or, with a planted fault, fail as a statement
    /// would.
    fn write(
        &self,
        conn: &mut Connection,
        changes: &[&Change],
    ) -> Result<Vec<Result<Committed, StoreError>>, Failure> {
        #[cfg(any(test, feature = "test-util"))]
        if let Some(error) = self.faults.failed_statement(changes) {
            return Err(Failure::Statement(error));
        }
        write(conn, changes, self.overlay.as_deref())
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
                self.fail_stop(error);
            } else {
                tracing::error!(%error, "SQLite sweep of idempotency records failed");
            }
        }
        let _ = sweep.reply.send(result);
    }

    /// A COMMIT failed with `error`: stop taking changes. Returns the error
    /// of the changes that COMMIT carried (durable or not: unknown).
    fn fail_stop(&self, error: &StoreError) -> StoreError {
        self.stop.stop();
        tracing::error!(%error, "SQLite COMMIT failed: the store stops taking changes until restart (fail-stop; the batch is not retried)");
        StoreError::with_kind(
            StoreErrorKind::OutcomeUnknown,
            format!(
                "{}; whether this change is durable is unknown (read the history after a \
                 restart); the store stopped taking changes",
                error.message()
            ),
        )
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
                    // server's front layer; the store-wide failures (fail-stop, a
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
        self.answered.fetch_add(1, Ordering::Relaxed);
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
