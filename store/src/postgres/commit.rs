//! The plain commit: one change, one statement, in a task of its own that
//! owns the change (and the user's guard in it) until the database has
//! answered, whatever happens to the caller's future.

use std::sync::atomic::Ordering;
use std::time::Instant;

use pointlock_core::{BoxFuture, Change, Committed, StoreError, StoreErrorKind};

use super::sql::statement_sql;
use super::PostgresStore;
use crate::rows::to_i64;

impl PostgresStore {
    /// Commit `change` in a task that owns it (and the user's guard in it)
    /// until the database has answered, whatever happens to the caller's
    /// future.
    pub(super) fn commit_in_task(
        &self,
        change: Change,
    ) -> BoxFuture<'static, Result<Committed, StoreError>> {
        let store = self.clone();
        let task = tokio::spawn(async move { store.commit_now(&change).await });
        Box::pin(async move {
            task.await.map_err(|e| {
                StoreError::with_kind(
                    StoreErrorKind::OutcomeUnknown,
                    format!("the PostgreSQL commit task failed: {e}"),
                )
            })?
        })
    }

    pub(super) async fn commit_now(&self, change: &Change) -> Result<Committed, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(statement_sql(change))
            .await
            .map_err(|e| self.failed(&e, false))?;
        self.run_change(&**client, &statement, change).await?
    }

    /// The one statement of `change` (prepared as `statement`, from
    /// [`statement_sql`]) on `client`, a connection or a chain's transaction:
    /// `Err` when the statement failed (a transaction is then aborted), else
    /// committed or refused by the condition.
    pub(super) async fn run_change<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        statement: &tokio_postgres::Statement,
        change: &Change,
    ) -> Result<Result<Committed, StoreError>, StoreError> {
        let user = to_i64(change.user_id().get());
        let point = i64::try_from(change.point()).map_err(|_| {
            StoreError::new(format!(
                "balance {} does not fit the PostgreSQL store (at most 9223372036854775807)",
                change.point()
            ))
        })?;
        let expected = change.expected_point().map(to_i64);
        let key = change.idempotency_key();
        let amount = to_i64(change.amount().get());
        let time = change.time_millis();
        let kind = change.kind().as_str();
        let key_text = key.map(|key| key.as_str());
        let expired_before = change.key_expired_before();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&user, &point, &time, &expected, &kind, &amount];
        if let Some(key_text) = &key_text {
            params.push(key_text);
            params.push(&expired_before);
        }
        let started = Instant::now();
        let rows = client.query(statement, &params).await;
        self.counters.commit_duration.observe(started.elapsed());
        let rows = rows.map_err(|e| self.failed(&e, true))?;
        Ok(match rows.first() {
            Some(row) => {
                let id: i64 = row.get(0);
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                u64::try_from(id)
                    .map(|id| change.committed(id))
                    .map_err(|_| StoreError::new("PostgreSQL assigned a negative history id"))
            }
            None => {
                // No extra query for the message: the service reads the balance
                // again anyway (one statement less per conflict, which matters on
                // a hot user shared by several instances).
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::conflict(format!(
                    "user {}: the balance is no longer the {} this change was computed from",
                    change.user_id(),
                    change.expected_point().unwrap_or(0)
                )))
            }
        })
    }
}
