//! The statements: each change is one conditional statement (see the [store's
//! docs](super)), chosen by [`statement_sql`]; the reads and the sweep.

use pointlock_core::Change;

/// The conditional balance write of a change computed from a positive balance:
/// only if the row still holds it.
macro_rules! update_if {
    () => {
        "UPDATE user_point SET point = $2, update_millis = $3
        WHERE id = $1 AND point = $4
        RETURNING id"
    };
}

/// The conditional balance write of a first balance, or of one computed from 0:
/// inserted, or updated only if the row still holds 0 (`$4` is the expected 0;
/// NULL only in negative controls, with the `test-util` feature).
macro_rules! upsert_if {
    () => {
        concat!(
            "INSERT INTO user_point (id, point, update_millis) VALUES ($1, $2, $3)
        ON CONFLICT (id) DO UPDATE
            SET point = EXCLUDED.point, update_millis = EXCLUDED.update_millis
            WHERE ",
            null_expected_is_unconditional!("$4::bigint"),
            "user_point.point = $4::bigint
        RETURNING id"
        )
    };
}

/// A change: the conditional write, then its history row if it applied.
macro_rules! change {
    ($write:expr) => {
        concat!(
            "WITH changed AS (",
            $write,
            ")
    INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT id, $5, $6, $3 FROM changed
    RETURNING id"
        )
    };
}

/// A change made with an idempotency key (`$7`), records made at or before
/// `$8` being expired: if the change applied, the user's expired record of the
/// key is deleted and the new one inserted. The insert reads `del` so that it
/// runs after the delete; a live record makes it fail on the primary key
/// (`idempotency_pkey`), which aborts the whole statement: nothing is written,
/// and the service, told of a conflict, finds the record.
macro_rules! keyed_change {
    ($write:expr) => {
        concat!(
            "WITH changed AS (",
            $write,
            "),
    del AS (
        DELETE FROM idempotency
        WHERE user_id = $1 AND key = $7 AND time_millis <= $8 AND EXISTS (SELECT 1 FROM changed)
        RETURNING 1),
    rec AS (
        INSERT INTO idempotency (user_id, key, type, amount, point, time_millis)
        SELECT id, $7, $5, $6, $2, $3 FROM changed WHERE (SELECT count(*) FROM del) >= 0
        RETURNING 1)
    INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT id, $5, $6, $3 FROM changed
    RETURNING id"
        )
    };
}

const UPDATE_IF: &str = change!(update_if!());
const UPSERT_IF: &str = change!(upsert_if!());
const UPDATE_IF_KEYED: &str = keyed_change!(update_if!());
const UPSERT_IF_KEYED: &str = keyed_change!(upsert_if!());
pub(super) const SELECT_KEY: &str = "SELECT type, amount, point, time_millis FROM idempotency
    WHERE user_id = $1 AND key = $2";
/// One bounded step of the sweep (the outer condition again: a record replaced
/// meanwhile is not expired).
pub(super) const SWEEP_KEYS: &str =
    "DELETE FROM idempotency WHERE time_millis <= $1 AND (user_id, key) IN (
        SELECT user_id, key FROM idempotency WHERE time_millis <= $1 LIMIT $2)";
/// The primary key whose violation means "this key has a live record".
pub(super) const KEY_CONSTRAINT: &str = "idempotency_pkey";
pub(super) const SELECT_POINT: &str = "SELECT point, update_millis FROM user_point WHERE id = $1";
pub(super) const SELECT_HISTORIES: &str =
    "SELECT id, type, amount, time_millis FROM point_history WHERE user_id = $1 ORDER BY id";

/// The statement of a change: from a positive balance or not, keyed or not.
pub(super) fn statement_sql(change: &Change) -> &'static str {
    let from_positive = change.expected_point().is_some_and(|expected| expected > 0);
    match (from_positive, change.idempotency_key().is_some()) {
        (true, false) => UPDATE_IF,
        (false, false) => UPSERT_IF,
        (true, true) => UPDATE_IF_KEYED,
        (false, true) => UPSERT_IF_KEYED,
    }
}
