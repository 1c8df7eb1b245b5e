//! The statements: a batch's row locks, its reads and its multi-row writes
//! over `unnest` arrays (see the [store's docs](super), "Batches"); the plain
//! reads and the sweep.

/// The batch's users' rows, locked in id order (one global order: no two
/// batches deadlock on them). Absent users are not locked: their first row is
/// a plain insert, which fails if another batch made it meanwhile.
pub(super) const LOCK_USERS: &str = "SELECT id, point, update_millis FROM user_point
    WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE";
/// The records of the batch's keys (read after the rows are locked: a key's
/// record is only written under its user's row lock).
pub(super) const SELECT_KEYS: &str =
    "SELECT user_id, key, type, amount, point, time_millis FROM idempotency
    WHERE (user_id, key) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))";
/// The new balances of users whose rows the batch holds.
pub(super) const UPDATE_POINTS: &str = "UPDATE user_point
    SET point = u.point, update_millis = u.update_millis
    FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, point, update_millis)
    WHERE user_point.id = u.id";
/// The first balances of users who had no row when the batch locked: a
/// primary-key violation means another batch made the row meanwhile (retried).
pub(super) const INSERT_POINTS: &str = "INSERT INTO user_point (id, point, update_millis)
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])";
/// The history rows, inserted in the order given (the ids ascend in it).
pub(super) const INSERT_HISTORY: &str =
    "INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT user_id, type, amount, time_millis
    FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])
        WITH ORDINALITY AS h(user_id, type, amount, time_millis, n)
    ORDER BY n
    RETURNING id";
/// The records of applied keyed requests; an expired record of the key is
/// replaced (a live one was an answer, never a write).
pub(super) const UPSERT_KEYS: &str =
    "INSERT INTO idempotency (user_id, key, type, amount, point, time_millis)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
    ON CONFLICT (user_id, key) DO UPDATE SET type = EXCLUDED.type, amount = EXCLUDED.amount,
        point = EXCLUDED.point, time_millis = EXCLUDED.time_millis";
/// The primary key of the balances: violated by a first row made meanwhile.
pub(super) const POINT_CONSTRAINT: &str = "user_point_pkey";
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
