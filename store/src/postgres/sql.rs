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
/// Everything a batch writes, in one statement: the new balances of users
/// whose rows it holds (`$1`-`$3`), the first balances of users who had no row
/// (`$4`-`$6`: a primary-key violation means another batch made the row
/// meanwhile, and the batch runs again), the records of applied keyed requests
/// (`$7`-`$12`; an expired record of the key is replaced: a live one was an
/// answer, never a write) and the history rows in order (`$13`-`$16`). It
/// answers the history ids (ascending in the given order) and how many
/// balances it updated.
pub(super) const WRITE: &str = "WITH updated AS (
        UPDATE user_point SET point = u.point, update_millis = u.update_millis
        FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, point, update_millis)
        WHERE user_point.id = u.id
        RETURNING 1),
    inserted AS (
        INSERT INTO user_point (id, point, update_millis)
        SELECT * FROM unnest($4::bigint[], $5::bigint[], $6::bigint[])
        RETURNING 1),
    recorded AS (
        INSERT INTO idempotency (user_id, key, type, amount, point, time_millis)
        SELECT * FROM unnest($7::bigint[], $8::text[], $9::text[], $10::bigint[],
            $11::bigint[], $12::bigint[])
        ON CONFLICT (user_id, key) DO UPDATE SET type = EXCLUDED.type,
            amount = EXCLUDED.amount, point = EXCLUDED.point,
            time_millis = EXCLUDED.time_millis
        RETURNING 1),
    history AS (
        INSERT INTO point_history (user_id, type, amount, time_millis)
        SELECT user_id, type, amount, time_millis
        FROM unnest($13::bigint[], $14::text[], $15::bigint[], $16::bigint[])
            WITH ORDINALITY AS h(user_id, type, amount, time_millis, n)
        ORDER BY n
        RETURNING id)
    SELECT id, (SELECT count(*) FROM updated), (SELECT count(*) FROM inserted),
        (SELECT count(*) FROM recorded)
    FROM history";
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
/// One page of a user's history: rows after id `$2`, at most `$3` (the
/// `(user_id, id)` index gives them in order, reading only the page).
pub(super) const SELECT_HISTORIES: &str =
    "SELECT id, type, amount, time_millis FROM point_history \
     WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3";
