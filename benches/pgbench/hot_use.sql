-- benches/pgbench.sh, hot load: a use of 1 by the one user :hot, conditioned
-- on a balance of at least 1.
WITH changed AS (
    UPDATE user_point SET point = point - 1, update_millis = :now
    WHERE id = :hot AND point >= 1
    RETURNING id)
INSERT INTO point_history (user_id, type, amount, time_millis)
SELECT id, 'USE', 1, :now::bigint FROM changed;
