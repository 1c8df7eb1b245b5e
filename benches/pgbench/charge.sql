-- benches/pgbench.sh, spread load: a charge of 1 for a random user among
-- :users, the policy in SQL (the balance may reach :max exactly), the history
-- row in the same statement. One autocommit statement per change. A refused
-- charge changes nothing (no row returned, nothing inserted).
\set id random(1, :users)
WITH changed AS (
    UPDATE user_point SET point = point + 1, update_millis = :now
    WHERE id = :id AND point + 1 <= :max
    RETURNING id)
INSERT INTO point_history (user_id, type, amount, time_millis)
SELECT id, 'CHARGE', 1, :now::bigint FROM changed;
