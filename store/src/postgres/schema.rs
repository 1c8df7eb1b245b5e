//! The schema: versioned migrations embedded here, applied at start inside a
//! session advisory lock, so N instances starting together migrate once; a
//! database whose schema is newer than this build is refused.

use super::connect::PgOpenError;

/// The key of the session advisory lock held while migrating (any constant
/// unlikely to be used by another application on the same database: "PLK1").
const MIGRATION_LOCK_KEY: i64 = 0x504C_4B31;

/// The embedded migrations: `MIGRATIONS[i]` brings the schema to version `i + 1`.
/// Append only; never edit a step that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: balances, and the history with a store-wide id.
    "CREATE TABLE user_point (
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
    CREATE INDEX point_history_by_user ON point_history (user_id, id);",
    // 2: idempotency records, written by the statement of the change they
    // record; the index serves the sweep of expired records.
    "CREATE TABLE idempotency (
        user_id     bigint NOT NULL CHECK (user_id > 0),
        key         text   NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
        type        text   NOT NULL CHECK (type IN ('CHARGE', 'USE')),
        amount      bigint NOT NULL CHECK (amount > 0),
        point       bigint NOT NULL CHECK (point >= 0),
        time_millis bigint NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    CREATE INDEX idempotency_by_time ON idempotency (time_millis);",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Apply the migrations the database lacks, under the migration advisory lock.
pub(super) async fn migrate(client: &deadpool_postgres::Object) -> Result<(), PgOpenError> {
    let failed = |e: tokio_postgres::Error| PgOpenError::Migrate(e.to_string());
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(failed)?;
    let result = migrate_locked(client).await;
    // Released on disconnect anyway; unlock now so the pooled connection is clean.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    result?;
    unlocked.map_err(failed)?;
    Ok(())
}

async fn migrate_locked(client: &deadpool_postgres::Object) -> Result<(), PgOpenError> {
    let failed = |e: tokio_postgres::Error| PgOpenError::Migrate(e.to_string());
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS pointlock_schema (
                version    integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(failed)?;
    let found: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pointlock_schema",
            &[],
        )
        .await
        .map_err(failed)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(PgOpenError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = index as i32 + 1;
        client
            .batch_execute(&format!(
                "BEGIN; {step}; INSERT INTO pointlock_schema (version) VALUES ({version}); COMMIT;"
            ))
            .await
            .map_err(|e| PgOpenError::Migrate(format!("step {version}: {e} (rolled back)")))?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    Ok(())
}
