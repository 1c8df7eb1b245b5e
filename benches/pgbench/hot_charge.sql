-- benches/pgbench.sh, hot load: a charge of 1 for the one user :hot (weighted
-- against hot_use.sql, so the balance walks around its start and stays within
-- 0..:max).
WITH changed AS (
    UPDATE user_point SET point = point + 1, update_millis = :now
    WHERE id = :hot AND point + 1 <= :max
    RETURNING id)
INSERT INTO point_history (user_id, type, amount, time_millis)
SELECT id, 'CHARGE', 1, :now::bigint FROM changed;
