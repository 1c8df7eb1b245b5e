//! One batch's transaction (see the [store's docs](super), "Batches"): lock
//! the users' rows in id order, read them and the keys' records, decide
//! ([`decide`](super::decide)), write everything in one multi-row
//! statement sent with the COMMIT; retried when the database reports a deadlock, a serialization
//! failure or a first row made meanwhile; each user alone after a failed
//! statement.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pointlock_core::{IdempotencyKey, StoreError, StoreErrorKind, UserId, UserPoint};
use tokio_postgres::error::SqlState;

use super::decide::{self, Answer, Found, Plan};
use super::queue::{Item, Taken};
use super::sql::{LOCK_USERS, POINT_CONSTRAINT, SELECT_KEYS, WRITE};
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
        #[cfg(any(test, feature = "test-util"))]
        self.planted_panic(batch);
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
        let mut client = Some(self.client().await.map_err(Failure::Stop)?);
        for attempt in 1..=ATTEMPTS_MAX {
            let session = match client.take() {
                Some(session) => session,
                // The last connection was discarded: a new one.
                None => self.client().await.map_err(Failure::Stop)?,
            };
            let (session, outcome) = self.attempt(session, batch).await;
            client = session;
            match outcome {
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
                // once: try again on a new one.
                Err(Failure::Stop(error))
                    if client.is_none()
                        && error.kind() == StoreErrorKind::Unavailable
                        && attempt < ATTEMPTS_MAX => {}
                other => return other,
            }
        }
        unreachable!("the last attempt returns")
    }

    /// One attempt on `client`: BEGIN with the row locks and the reads in
    /// one flight; the decisions; the writes with the COMMIT in a second.
    /// Hands the connection back unless it was discarded (its transaction's
    /// end unknown).
    async fn attempt(
        &self,
        client: deadpool_postgres::Object,
        batch: &[Taken],
    ) -> (Option<deadpool_postgres::Object>, Result<Plan, Failure>) {
        let started = Instant::now();
        let mut session = Session {
            client: Some(client),
            state: State::default(),
        };
        let outcome = match session.client.as_ref() {
            Some(client) => self.transaction(client, &mut session.state, batch).await,
            None => unreachable!("the session was made with its connection"),
        };
        session.roll_back().await;
        if let Ok(plan) = &outcome {
            self.counters.commit_duration.observe(started.elapsed());
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            self.counters
                .commits
                .fetch_add(plan.history.users.len() as u64, Ordering::Relaxed);
            self.counters
                .conflicts
                .fetch_add(plan.conflicts, Ordering::Relaxed);
        }
        (session.release(), outcome)
    }

    async fn transaction(
        &self,
        client: &deadpool_postgres::Object,
        session: &mut State,
        batch: &[Taken],
    ) -> Result<Plan, Failure> {
        let ids: Vec<i64> = batch.iter().map(|t| to_i64(t.user.get())).collect();
        let (users, keys) = keys_of(batch);
        let lock = client
            .prepare_cached(LOCK_USERS)
            .await
            .map_err(|e| self.failure(&e, false))?;
        let select_keys = match users.is_empty() {
            true => None,
            false => Some(
                client
                    .prepare_cached(SELECT_KEYS)
                    .await
                    .map_err(|e| self.failure(&e, false))?,
            ),
        };
        let write = client
            .prepare_cached(WRITE)
            .await
            .map_err(|e| self.failure(&e, false))?;
        session.begun = true;
        let (begun, rows, records) = tokio::join!(
            client.batch_execute("BEGIN"),
            async { client.query(&lock, &[&ids]).await },
            async {
                match &select_keys {
                    Some(select) => client.query(select, &[&users, &keys]).await.map(Some),
                    None => Ok(None),
                }
            }
        );
        begun.map_err(|e| self.failure(&e, false))?;
        let rows = rows.map_err(|e| self.failure(&e, false))?;
        let records = records.map_err(|e| self.failure(&e, false))?;
        let found = found(rows, records.unwrap_or_default())?;
        let mut plan = decide::plan(batch, &found);
        if !plan.writes() {
            // Nothing to write (refusals, answers from records): the locks
            // go; nothing to flush.
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| self.failure(&e, true))?;
            session.ended = true;
            return Ok(plan);
        }
        let (u, i, k, h) = (&plan.updates, &plan.inserts, &plan.keys, &plan.history);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 16] = [
            &u.ids, &u.points, &u.millis, &i.ids, &i.points, &i.millis, &k.users, &k.keys,
            &k.kinds, &k.amounts, &k.points, &k.millis, &h.users, &h.kinds, &h.amounts, &h.millis,
        ];
        let (written, committed) = tokio::join!(
            client.query(&write, &params),
            client.batch_execute("COMMIT")
        );
        match (written, committed) {
            (Ok(rows), Ok(())) => {
                session.ended = true;
                let updated: i64 = rows.first().map_or(0, |row| row.get(1));
                if updated != u.ids.len() as i64 {
                    // Committed, yet a locked row was not updated: only a
                    // bug or a hand-made change; nothing can be taken back.
                    return Err(Failure::Stop(StoreError::with_kind(
                        StoreErrorKind::OutcomeUnknown,
                        format!(
                            "PostgreSQL updated {updated} of {} locked balances; the outcome is \
                             unknown (read the history)",
                            u.ids.len()
                        ),
                    )));
                }
                let ids = rows.iter().map(|row| row.get(0)).collect();
                plan.assign(ids).map_err(Failure::Stop)?;
                Ok(plan)
            }
            // The write failed, so the transaction was aborted and its COMMIT
            // answered as a ROLLBACK: nothing of it counts.
            (Err(e), Ok(())) => {
                session.ended = true;
                Err(self.failure(&e, false))
            }
            (_, Err(e)) => Err(self.failure(&e, true)),
        }
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

/// A pooled connection in use by an attempt. Once a transaction was begun on
/// it and its end is not known, it never goes back to the pool: dropped, it
/// is discarded (a panic halfway cannot leave an open transaction for the
/// next user of the connection).
struct Session {
    client: Option<deadpool_postgres::Object>,
    state: State,
}

/// Where the attempt's transaction stands.
#[derive(Default)]
struct State {
    /// BEGIN was sent.
    begun: bool,
    /// Its COMMIT or ROLLBACK was answered.
    ended: bool,
}

impl Session {
    fn is_clean(&self) -> bool {
        !self.state.begun || self.state.ended
    }

    /// End a transaction left open (a failed read): ROLLBACK, if the
    /// connection still answers.
    async fn roll_back(&mut self) {
        if self.is_clean() {
            return;
        }
        if let Some(client) = &self.client {
            if !client.is_closed() && client.batch_execute("ROLLBACK").await.is_ok() {
                self.state.ended = true;
            }
        }
    }

    /// The connection, if it may be used again.
    fn release(mut self) -> Option<deadpool_postgres::Object> {
        if self.is_clean() {
            self.client.take()
        } else {
            None
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !self.is_clean() || client.is_closed() {
                // Out of the pool: the connection closes with it.
                drop(deadpool_postgres::Object::take(client));
            }
        }
    }
}

/// The rows a batch locked and read.
fn found(
    rows: Vec<tokio_postgres::Row>,
    records: Vec<tokio_postgres::Row>,
) -> Result<Found, Failure> {
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
    for row in records {
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
    Ok(found)
}

#[cfg(any(test, feature = "test-util"))]
impl PostgresStore {
    /// The planted fault: panic on a batch holding the panicking amount.
    fn planted_panic(&self, batch: &[Taken]) {
        let Some(amount) = self.panic_amount else {
            return;
        };
        let planted = batch.iter().flat_map(|t| &t.items).any(|item| match item {
            Item::Request(request, _) => request.amount().get() == amount,
            Item::Change(change, _) => change.amount().get() == amount,
            Item::Barrier(_) => false,
        });
        assert!(
            !planted,
            "the PostgreSQL writer panics on {amount} (a planted fault)"
        );
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
