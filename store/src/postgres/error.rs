//! The classification of a statement's failure into a [`StoreErrorKind`]
//! (see the [store's docs](super), "Failures").

use std::sync::atomic::Ordering;

use pointlock_core::{StoreError, StoreErrorKind};
use tokio_postgres::error::SqlState;

use super::sql::KEY_CONSTRAINT;
use super::PostgresStore;

impl PostgresStore {
    /// The error of a statement that failed (see the module docs for the kinds).
    pub(super) fn failed(&self, error: &tokio_postgres::Error, writing: bool) -> StoreError {
        if let Some(db) = error.as_db_error() {
            if *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(KEY_CONSTRAINT) {
                // Not a failure: the key's record was committed meanwhile.
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                return StoreError::conflict(
                    "this idempotency key was used by a change committed meanwhile; nothing was changed",
                );
            }
        }
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let Some(db) = error.as_db_error() else {
            // No answer from the database: the connection broke.
            let kind = if writing {
                StoreErrorKind::OutcomeUnknown
            } else {
                StoreErrorKind::Unavailable
            };
            let what = if writing {
                "whether the change was committed is unknown (read the history)"
            } else {
                "nothing was changed"
            };
            return StoreError::with_kind(
                kind,
                format!("the PostgreSQL connection broke ({error}); {what}"),
            );
        };
        let class = &db.code().code()[..2];
        let kind = if *db.code() == SqlState::T_R_SERIALIZATION_FAILURE
            || *db.code() == SqlState::T_R_DEADLOCK_DETECTED
        {
            StoreErrorKind::Conflict
        } else if class == "57" || class == "08" || class == "53" {
            // Operator intervention (a shutdown, the statement timeout),
            // connection trouble, insufficient resources: try again later.
            StoreErrorKind::Unavailable
        } else {
            StoreErrorKind::Failed
        };
        StoreError::with_kind(
            kind,
            format!(
                "PostgreSQL refused the statement ({}: {}); nothing was changed",
                db.code().code(),
                db.message()
            ),
        )
    }
}
