-- benches/pgbench.sh's fallback when no release `pointlock` binary is built:
-- the two tables of pointlock's PostgreSQL schema as its migration 1 creates
-- them (store/src/postgres/schema.rs). With a binary, pgbench.sh lets it
-- migrate the database instead (SCHEMA=binary), so the tables are exactly the
-- binary's.
CREATE TABLE user_point (
    id            bigint PRIMARY KEY CHECK (id > 0),
    point         bigint NOT NULL CHECK (point >= 0),
    update_millis bigint NOT NULL
);
CREATE TABLE point_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL CHECK (user_id > 0),
    type        text   NOT NULL CHECK (type IN ('CHARGE', 'USE')),
    amount      bigint NOT NULL CHECK (amount > 0),
    time_millis bigint NOT NULL
);
CREATE INDEX point_history_by_user ON point_history (user_id, id);
