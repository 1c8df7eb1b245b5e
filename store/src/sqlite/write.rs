//! The write of a batch: one transaction, and in it each change's
//! conditional write.
//!
//! # The condition
//!
//! A change computed from balance `b` writes its balance only if the stored
//! balance is still `b` (an absent row counts as 0): `UPDATE … WHERE point = b`,
//! or, for `b = 0`, an insert whose conflict clause updates only `WHERE point =
//! 0`. Exactly one row changed, or the change is refused as a conflict: its
//! history row is not written and the rest of the batch goes on. Two changes of
//! one user in one batch (pipelined, the next computed on the one before; or
//! writers that bypassed the lock) are thus checked against each other inside
//! the transaction, in order; pipelined, a change after one of its user that
//! did not apply is refused without being written, whatever its condition
//! (the crate's `sequenced.rs`).
//!
//! # Idempotency records
//!
//! A change made with a key first checks the user's record for that key
//! (`SELECT` inside the transaction: the writer is the only writer, so nothing
//! can slip in between): a live one refuses the change as a conflict before
//! anything is written. Otherwise, after the balance and the history row, the
//! record is written (replacing an expired one) in the same transaction, so a
//! crash keeps both or neither.

use pointlock_core::{Change, Committed, StoreError, StoreErrorKind};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::rows::to_i64;
use crate::sequenced::{Dependents, Overlay};

/// A first balance, or one computed from 0: insert it, or update a row whose
/// balance is still 0 (`?4` is the expected 0; `NULL` only in negative
/// controls, with the `test-util` feature).
const UPSERT_POINT_IF: &str = concat!(
    "INSERT INTO user_point (id, point, update_millis) VALUES (?1, ?2, ?3)
     ON CONFLICT (id) DO UPDATE SET point = excluded.point, update_millis = excluded.update_millis
     WHERE ",
    null_expected_is_unconditional!("?4"),
    "user_point.point = ?4"
);
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

/// Why a batch was not committed.
pub(super) enum Failure {
    /// A statement failed; the transaction was rolled back: nothing is durable.
    Statement(StoreError),
    /// The COMMIT failed: whether the batch is durable is unknown.
    Commit(StoreError),
}

/// Write `changes` in one transaction: each change applied or refused by its
/// condition, and the transaction committed; or, on any error, nothing. With
/// the sequenced state (`overlay`: pipelined), a change computed on one that
/// did not apply is refused unwritten (see the crate's `sequenced.rs`).
pub(super) fn write(
    conn: &mut Connection,
    changes: &[&Change],
    overlay: Option<&Overlay>,
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
