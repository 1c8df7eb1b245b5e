//! The databases of the strategies: their schema, connections and pools,
//! the reset before each cell, and the check after it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use pointlock_store::{PostgresOptions, PostgresStore};
use tokio_postgres::NoTls;

use crate::strategies::DynError;
use crate::{Args, Strategy, HOT_USER};

/// The tables of the strategies (b)-(e): pointlock's schema (its migration 1),
/// plus a version column for the optimistic strategy.
fn schema(strategy: Strategy) -> String {
    let version = if strategy == Strategy::Optimistic {
        ",\n        version       bigint NOT NULL DEFAULT 0"
    } else {
        ""
    };
    format!(
        "CREATE TABLE user_point (
        id            bigint PRIMARY KEY CHECK (id > 0),
        point         bigint NOT NULL CHECK (point >= 0),
        update_millis bigint NOT NULL{version}
    );
    CREATE TABLE point_history (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id     bigint NOT NULL CHECK (user_id > 0),
        type        text   NOT NULL CHECK (type IN ('CHARGE', 'USE')),
        amount      bigint NOT NULL CHECK (amount > 0),
        time_millis bigint NOT NULL
    );
    CREATE INDEX point_history_by_user ON point_history (user_id, id);"
    )
}

/// A PostgreSQL error with the server's message, if it sent one.
fn db_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// The message of a strategy's error (the server's, for a database error).
pub(crate) fn describe(error: &DynError) -> String {
    match error.downcast_ref::<tokio_postgres::Error>() {
        Some(e) => db_message(e),
        None => error.to_string(),
    }
}

/// Panics with the server's message on a failed set-up or check statement.
pub(crate) trait OrPanic<T> {
    fn or_panic(self, what: &str) -> T;
}

impl<T> OrPanic<T> for Result<T, tokio_postgres::Error> {
    fn or_panic(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {}", db_message(&e)))
    }
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `url` with its database replaced by `db` (`postgres://USER@HOST:PORT/DB[?…]`).
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{root}/{db}?{query}"),
        None => format!("{root}/{db}"),
    }
}

pub(crate) async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("control connection: {e}");
        }
    });
    client
}

/// A pool configured like `PostgresStore`'s (same recycling, timeouts, options).
pub(crate) fn pool(url: &str, args: &Args) -> Pool {
    let mut config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    let wait = Duration::from_millis(args.pool_wait_ms);
    config
        .connect_timeout(wait)
        .application_name("pg_strategies")
        .options(format!(
            "-c statement_timeout={}",
            args.statement_timeout_ms
        ));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(args.pool_size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .runtime(Runtime::Tokio1)
        .build()
        .expect("a pool")
}

/// What the check of one cell found.
#[derive(Debug, Default)]
pub(crate) struct Check {
    pub acked: i64,
    pub balance_total: i64,
    /// Acknowledged charges missing from the balances.
    pub lost: i64,
    /// Balance that no acknowledged charge explains.
    pub phantom: i64,
    /// Users whose history does not replay to their balance.
    pub history_mismatch: i64,
    pub history_rows: i64,
}

pub(crate) async fn verify(client: &tokio_postgres::Client, acked: &HashMap<i64, i64>) -> Check {
    let mut balances: HashMap<i64, i64> = HashMap::new();
    for row in client
        .query("SELECT id, point FROM user_point WHERE point <> 0", &[])
        .await
        .or_panic("read balances")
    {
        balances.insert(row.get(0), row.get(1));
    }
    let mut histories: HashMap<i64, i64> = HashMap::new();
    let mut history_rows = 0;
    for row in client
        .query(
            "SELECT user_id, sum(CASE type WHEN 'CHARGE' THEN amount ELSE -amount END)::bigint, count(*)
             FROM point_history GROUP BY user_id",
            &[],
        )
        .await
        .or_panic("read histories")
    {
        histories.insert(row.get(0), row.get(1));
        history_rows += row.get::<_, i64>(2);
    }
    let mut check = Check {
        acked: acked.values().sum(),
        balance_total: balances.values().sum(),
        history_rows,
        ..Check::default()
    };
    let mut users: Vec<i64> = balances.keys().chain(acked.keys()).copied().collect();
    users.extend(histories.keys().copied());
    users.sort_unstable();
    users.dedup();
    for user in users {
        let balance = balances.get(&user).copied().unwrap_or(0);
        let acked = acked.get(&user).copied().unwrap_or(0);
        check.lost += (acked - balance).max(0);
        check.phantom += (balance - acked).max(0);
        if histories.get(&user).copied().unwrap_or(0) != balance {
            check.history_mismatch += 1;
        }
    }
    check
}

/// Wait (at most 10 s) until no connection of a pool of a previous cell is left.
pub(crate) async fn wait_backends_gone(admin: &tokio_postgres::Client) {
    for _ in 0..200 {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name IN ('pointlock', 'pg_strategies')",
                &[],
            )
            .await
            .or_panic("pg_stat_activity")
            .get(0);
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("note: connections of the previous cell still open after 10 s");
}

/// Truncate, seed, vacuum and checkpoint: every cell starts from the same state.
pub(crate) async fn reset(
    admin: &tokio_postgres::Client,
    client: &tokio_postgres::Client,
    args: &Args,
    warm_users: i64,
) {
    client
        .batch_execute("TRUNCATE user_point, point_history RESTART IDENTITY")
        .await
        .or_panic("truncate");
    if !args.no_seed_rows {
        // The measured users (the hot user is user 1) and the warm-up users.
        client
            .execute(
                "INSERT INTO user_point (id, point, update_millis)
                 SELECT g, 0, 0 FROM generate_series(1::bigint, $1::bigint) g",
                &[&(args.users.max(HOT_USER) + warm_users)],
            )
            .await
            .or_panic("seed");
    }
    for table in ["user_point", "point_history"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .or_panic("vacuum");
    }
    admin
        .batch_execute("CHECKPOINT")
        .await
        .or_panic("checkpoint");
}

pub(crate) async fn create_database(
    admin: &tokio_postgres::Client,
    url: &str,
    strategy: Strategy,
    args: &Args,
) {
    let name = strategy.database(&args.db_prefix);
    // Two calls: one query string of two statements would be one transaction,
    // which neither statement may run in.
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", db_message(&e)));
    }
    let db_url = with_database(url, &name);
    if strategy.uses_pointlock() {
        // pointlock creates its own schema (its migrations).
        drop(
            PostgresStore::connect(&db_url, PostgresOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    } else {
        connect(&db_url)
            .await
            .batch_execute(&schema(strategy))
            .await
            .or_panic("schema");
    }
    connect(&db_url)
        .await
        .batch_execute(
            "ALTER TABLE user_point SET (autovacuum_enabled = false);
             ALTER TABLE point_history SET (autovacuum_enabled = false)",
        )
        .await
        .or_panic("autovacuum off");
}
