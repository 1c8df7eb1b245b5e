//! Rows as both SQL stores read them back, checked: a row neither store can
//! have written is a corrupt-row error, never a panic or a wrong value.

use pointlock_core::{
    Amount, IdempotencyKey, IdempotencyRecord, PointHistory, StoreError, TransactionType, UserId,
};

/// Ids, amounts and balances are at most `2^63 - 1` (checked by their types), so
/// the signed 64-bit columns of both SQL stores hold them.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A row of `point_history` of `user` as a SQL store (`store`, for the error)
/// reads it back: `(id, type, amount, time_millis)`, checked.
pub(crate) fn history_row(
    store: &str,
    user: UserId,
    (id, kind, amount, time_millis): (i64, &str, i64, i64),
) -> Result<PointHistory, StoreError> {
    Ok(PointHistory {
        id: u64::try_from(id).map_err(|_| corrupt_row(store, "history id", user))?,
        user_id: user,
        kind: match kind {
            "CHARGE" => TransactionType::Charge,
            "USE" => TransactionType::Use,
            _ => return Err(corrupt_row(store, "history type", user)),
        },
        amount: Amount::from_i64(amount).map_err(|_| corrupt_row(store, "history amount", user))?,
        time_millis,
    })
}

/// A row of the `idempotency` table of `user` and `key` as a SQL store reads
/// it back: `(type, amount, point, time_millis)`, checked.
pub(crate) fn idempotency_row(
    store: &str,
    user: UserId,
    key: &IdempotencyKey,
    (kind, amount, point, time_millis): (&str, i64, i64, i64),
) -> Result<IdempotencyRecord, StoreError> {
    Ok(IdempotencyRecord {
        key: key.clone(),
        kind: match kind {
            "CHARGE" => TransactionType::Charge,
            "USE" => TransactionType::Use,
            _ => return Err(corrupt_row(store, "idempotency record type", user)),
        },
        amount: Amount::from_i64(amount)
            .map_err(|_| corrupt_row(store, "idempotency record amount", user))?,
        point: u64::try_from(point)
            .map_err(|_| corrupt_row(store, "idempotency record balance", user))?,
        time_millis,
    })
}

/// A row `store` cannot have written: `what` of `user`.
pub(crate) fn corrupt_row(store: &str, what: &str, user: UserId) -> StoreError {
    StoreError::new(format!(
        "corrupt row in the {store} store: {what} of user {user}"
    ))
}
