//! One batch's transaction (see the [store's docs](super), "Batches"): lock
//! the users' rows in id order, read them and the keys' records, decide
//! ([`decide`](super::decide)), write everything in multi-row statements,
//! COMMIT; retried when the database reports a deadlock, a serialization
//! failure or a first row made meanwhile; each user alone after a failed
//! statement.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pointlock_core::{IdempotencyKey, StoreError, StoreErrorKind, UserId, UserPoint};
use tokio_postgres::error::SqlState;

use super::decide::{self, Answer, Found, Plan};
use super::queue::{Item, Taken};
use super::sql::{
    INSERT_HISTORY, INSERT_POINTS, LOCK_USERS, POINT_CONSTRAINT, SELECT_KEYS, UPDATE_POINTS,
    UPSERT_KEYS,
};
use super::{PostgresStore, STORE};
use crate::rows::{corrupt_row, idempotency_row, to_i64};

/// The most attempts of one batch when the database reports a deadlock, a
/// serialization failure or a first row made meanwhile; past it the batch's
/// items are answered `WRITE_CONFLICT` (nothing changed), counted as a
/// fallback.
pub(super) const ATTEMPTS_MAX: u32 = 16;

/// Why an attempt did not commit.
enum Failure {
    /// Rolled back; the same batch may simply run again.
    Retry(StoreError),
    /// A statement was refused: rolled back; each user alone may succeed.
    Split(StoreError),
    /// Answer every item with this (nothing changed, unless the kind says
    /// the outcome is unknown).
    Stop(StoreError),
}

impl PostgresStore {
    /// Decide and commit `batch`: every item's answer, per user, in order.
    pub(super) async fn write_batch(&self, batch: &[Taken]) -> Vec<Vec<Answer>> {
        let only_barriers = batch
            .iter()
            .all(|t| t.items.iter().all(|item| matches!(item, Item::Barrier(_))));
        if only_barriers {
            // Everything before them is answered: nothing to lock.
            return batch
                .iter()
                .map(|t| t.items.iter().map(|_| Answer::Barrier).collect())
                .collect();
        }
        match self.with_retries(batch).await {
            Ok(plan) => plan.answers,
            Err(Failure::Split(_)) if batch.len() > 1 => {
                // One user's failing statement must not fail the others.
                let mut answers = Vec::with_capacity(batch.len());
                for taken in batch {
                    let alone = self.with_retries(std::slice::from_ref(taken)).await;
                    answers.push(match alone {
                        Ok(mut plan) => plan.answers.pop().unwrap_or_default(),
                        Err(failure) => failed(taken, failure),
                    });
                }
                answers
            }
            Err(failure) => {
                let error = failure.into_error();
                batch
                    .iter()
                    .map(|taken| failed(taken, Failure::Stop(error.clone())))
                    .collect()
            }
        }
    }

    async fn with_retries(&self, batch: &[Taken]) -> Result<Plan, Failure> {
        let mut client = self.client().await.map_err(Failure::Stop)?;
        for attempt in 1..=ATTEMPTS_MAX {
            match self.attempt(&mut client, batch).await {
                Err(Failure::Retry(_)) if attempt < ATTEMPTS_MAX => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    // Let the transaction that won finish first.
                    tokio::time::sleep(Duration::from_micros(200 * u64::from(attempt))).await;
                }
                Err(Failure::Retry(error)) => {
                    self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                    return Err(Failure::Stop(StoreError::conflict(format!(
                        "PostgreSQL reported conflicts on {ATTEMPTS_MAX} attempts in a row (the \
                         last: {}); nothing was changed; retry",
                        error.message()
                    ))));
                }
                // A connection the database closed (a restart) fails at
                // once with nothing sent: try again on a new one.
                Err(Failure::Stop(_)) if client.is_closed() && attempt < ATTEMPTS_MAX => {
                    drop(client);
                    client = self.client().await.map_err(Failure::Stop)?;
                }
                other => return other,
            }
        }
        unreachable!("the last attempt returns")
    }

    /// One attempt: BEGIN, lock and read, decide, write, COMMIT.
    async fn attempt(
        &self,
        client: &mut deadpool_postgres::Object,
        batch: &[Taken],
    ) -> Result<Plan, Failure> {
        let started = Instant::now();
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.failure(&e, false))?;
        let found = self.lock_and_read(&tx, batch).await?;
        let mut plan = decide::plan(batch, &found);
        if plan.writes() {
            let ids = self.write(&tx, &plan).await?;
            plan.assign(ids).map_err(Failure::Split)?;
        }
        tx.commit().await.map_err(|e| self.failure(&e, true))?;
        self.counters.commit_duration.observe(started.elapsed());
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .commits
            .fetch_add(plan.history.users.len() as u64, Ordering::Relaxed);
        self.counters
            .conflicts
            .fetch_add(plan.conflicts, Ordering::Relaxed);
        Ok(plan)
    }

    /// The batch's rows, locked in id order, and the records of its keys.
    async fn lock_and_read(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        batch: &[Taken],
    ) -> Result<Found, Failure> {
        let ids: Vec<i64> = batch.iter().map(|t| to_i64(t.user.get())).collect();
        let lock = tx
            .prepare_cached(LOCK_USERS)
            .await
            .map_err(|e| self.failure(&e, false))?;
        let rows = tx
            .query(&lock, &[&ids])
            .await
            .map_err(|e| self.failure(&e, false))?;
        let mut found = Found::default();
        for row in rows {
            let (id, point, millis): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let user = user_of(id)?;
            let point = u64::try_from(point)
                .map_err(|_| Failure::Stop(corrupt_row(STORE, "negative balance", user)))?;
            found.points.insert(
                user,
                UserPoint {
                    id: user,
                    point,
                    update_millis: millis,
                },
            );
        }
        let (users, keys) = keys_of(batch);
        if !users.is_empty() {
            let select = tx
                .prepare_cached(SELECT_KEYS)
                .await
                .map_err(|e| self.failure(&e, false))?;
            let rows = tx
                .query(&select, &[&users, &keys])
                .await
                .map_err(|e| self.failure(&e, false))?;
            for row in rows {
                let user = user_of(row.get(0))?;
                let key: &str = row.get(1);
                let key = IdempotencyKey::new(key)
                    .map_err(|_| Failure::Stop(corrupt_row(STORE, "idempotency key", user)))?;
                let record = idempotency_row(
                    STORE,
                    user,
                    &key,
                    (row.get(2), row.get(3), row.get(4), row.get(5)),
                )
                .map_err(Failure::Stop)?;
                found.records.insert((user, key), record);
            }
        }
        Ok(found)
    }

    /// The plan's writes, sent together (pipelined on the connection, run in
    /// order); the history ids.
    async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        plan: &Plan,
    ) -> Result<Vec<i64>, Failure> {
        let prepare = |sql| async move {
            tx.prepare_cached(sql)
                .await
                .map_err(|e| self.failure(&e, false))
        };
        let (update, insert, history, keys) = tokio::try_join!(
            prepare(UPDATE_POINTS),
            prepare(INSERT_POINTS),
            prepare(INSERT_HISTORY),
            prepare(UPSERT_KEYS)
        )?;
        let (u, i, h, k) = (&plan.updates, &plan.inserts, &plan.history, &plan.keys);
        let updated = async {
            if u.ids.is_empty() {
                return Ok(0);
            }
            tx.execute(&update, &[&u.ids, &u.points, &u.millis]).await
        };
        let inserted = async {
            if i.ids.is_empty() {
                return Ok(0);
            }
            tx.execute(&insert, &[&i.ids, &i.points, &i.millis]).await
        };
        let rows = async {
            tx.query(&history, &[&h.users, &h.kinds, &h.amounts, &h.millis])
                .await
        };
        let recorded = async {
            if k.users.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &keys,
                &[
                    &k.users, &k.keys, &k.kinds, &k.amounts, &k.points, &k.millis,
                ],
            )
            .await
        };
        let (updated, inserted, rows, recorded) = tokio::join!(updated, inserted, rows, recorded);
        let updated = updated.map_err(|e| self.failure(&e, false))?;
        inserted.map_err(|e| self.failure(&e, false))?;
        let rows = rows.map_err(|e| self.failure(&e, false))?;
        recorded.map_err(|e| self.failure(&e, false))?;
        if updated != u.ids.len() as u64 {
            // A locked row cannot vanish: only a bug or a hand-made change.
            return Err(Failure::Split(StoreError::new(format!(
                "PostgreSQL updated {updated} of {} locked balances; nothing was changed",
                u.ids.len()
            ))));
        }
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// What a failed statement (`committing`: the COMMIT) means for the batch.
    fn failure(&self, error: &tokio_postgres::Error, committing: bool) -> Failure {
        if let Some(db) = error.as_db_error() {
            let code = db.code();
            if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || (*code == SqlState::UNIQUE_VIOLATION
                    && db.constraint() == Some(POINT_CONSTRAINT))
            {
                return Failure::Retry(StoreError::conflict(format!(
                    "{}: {}",
                    code.code(),
                    db.message()
                )));
            }
        }
        let error = self.failed(error, committing);
        match error.kind() {
            StoreErrorKind::Failed if !committing => Failure::Split(error),
            _ => Failure::Stop(error),
        }
    }
}

impl Failure {
    fn into_error(self) -> StoreError {
        match self {
            Self::Retry(error) | Self::Split(error) | Self::Stop(error) => error,
        }
    }
}

/// Every item of `taken` answered with `failure`'s error.
fn failed(taken: &Taken, failure: Failure) -> Vec<Answer> {
    let error = failure.into_error();
    taken
        .items
        .iter()
        .map(|item| match item {
            Item::Request(..) => Answer::Request(Err(error.clone())),
            Item::Change(..) => Answer::Change(Err(error.clone())),
            Item::Barrier(_) => Answer::Barrier,
        })
        .collect()
}

/// The users and keys of the batch's keyed items, as two columns.
fn keys_of(batch: &[Taken]) -> (Vec<i64>, Vec<&str>) {
    let mut users = Vec::new();
    let mut keys = Vec::new();
    for taken in batch {
        for item in &taken.items {
            let key = match item {
                Item::Request(request, _) => request.idempotency_key(),
                Item::Change(change, _) => change.idempotency_key(),
                Item::Barrier(_) => None,
            };
            if let Some(key) = key {
                users.push(to_i64(taken.user.get()));
                keys.push(key.as_str());
            }
        }
    }
    (users, keys)
}

/// The user of a row's id column.
fn user_of(id: i64) -> Result<UserId, Failure> {
    u64::try_from(id)
        .ok()
        .and_then(|id| UserId::new(id).ok())
        .ok_or_else(|| {
            Failure::Stop(StoreError::new(
                "corrupt row in the PostgreSQL store: user id",
            ))
        })
}
