//! The strategy benchmark: ways of making concurrent
//! charges exact on one PostgreSQL, side by side, in one run.
//!
//! ```sh
//! scripts/pg-cluster.sh start target/pgs && set -a && . target/pgs/env && set +a
//! cargo run --release --locked --example pg_strategies             # 3 rounds, every cell
//! cargo run --release --locked --example pg_strategies -- --help
//! scripts/pg-cluster.sh stop target/pgs
//! ```
//!
//! A *cell* is one strategy × one load × one number of instances: `--requests`
//! (1,000) charges of 1, started at once (every task waits on one barrier), either
//! all on ONE user (`hot`) or on users drawn at random among `--users` (10,000;
//! `spread`; the same draw for every strategy of a round). An *instance* is what
//! one server process would own: its own connection pool of `--pool-size` (16)
//! connections and, for pointlock, its own `PointService` and in-process
//! `KeyedLock`. Instances live in this one process; request `i` goes to instance
//! `i % n` (`--routing by-user`: instance `user % n`, as a load balancer routing
//! by user id would send it).
//!
//! Strategies (each in its own database, created fresh by this benchmark, with
//! the same two tables; rows of every user exist before each cell, balance 0,
//! unless `--no-seed-rows`):
//!
//! - `pointlock`: the product: `service.charge(Arc::new(service.lock().lock(user).await), 1)`
//!   over a `PostgresStore` (a read, then one conditional statement; a conflict
//!   between instances is re-read and retried by the service, at most 8 attempts).
//! - `pessimistic`: `BEGIN; SELECT point … FOR UPDATE; (policy in Rust) UPDATE …;
//!   INSERT history; COMMIT` (the brief's shape: five round trips).
//! - `pessimistic-cte`: the same with the UPDATE and the history INSERT in one
//!   statement (pointlock's write shape: four round trips).
//! - `optimistic`: a `version` column; read point and version, policy in Rust,
//!   `UPDATE … SET point, version = version + 1 WHERE id AND version = $seen` with
//!   the history INSERT in the same statement; 0 rows: read again and retry, at
//!   most `--optimistic-attempts` (100) times, then give up.
//! - `sql`: one statement, policy in SQL: `UPDATE … SET point = point + $2 WHERE
//!   id = $1 AND point + $2 <= $max` with the history INSERT in the same CTE.
//! - `unconditional` (negative control, not in the default set): pointlock with
//!   its store's condition switched off (test-util), which must lose updates
//!   with several instances: it shows that the checker below has teeth (its
//!   cells do not fail the run; any other cell with a lost or phantom update,
//!   or a history that does not replay, makes the benchmark exit 1).
//!
//! A missing row (only with `--no-seed-rows`): pessimistic and optimistic
//! create it with `INSERT … ON CONFLICT DO NOTHING` and take their path again;
//! `sql` follows its UPDATE that found no row with one conditional upsert (the
//! same CTE); pointlock needs no extra step (its write from 0 is an upsert).
//!
//! Per cell: wall time from the barrier to the last answer, throughput (acknowledged
//! charges per second), retries (pointlock: commits refused by the store's condition;
//! optimistic: version misses), give-ups and errors, and the check: every user's
//! balance equals the charges acknowledged for it (`lost` counts acknowledged
//! charges missing from balances, `phantom` balance nobody acknowledged) and its
//! history replays to its balance. PostgreSQL CPU: user + system time of every
//! process of the cluster from `/proc/PID/stat` before and after the cell (the
//! postmaster, read from `DATA/postmaster.pid`, with its children's reaped time,
//! and every process whose parent it is); this process's own CPU the same way.
//!
//! Before each cell: the strategy's tables are truncated and re-seeded, `VACUUM
//! ANALYZE`d (autovacuum is off on them: each cell starts from fresh tables) and
//! the cluster checkpointed; the instances' pools are opened and warmed (two
//! passes of `pool size` charges per instance on users outside the measured ones,
//! so each connection has prepared its statements). Strategies run in a rotated
//! order each round. Output: a markdown table of medians (and min–max) and a JSON
//! file (`--json`) that `scripts/plot_performance.py` draws.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use pointlock::core::{Amount, PointError, PointService, Policy, UserId};
use pointlock::server::clock::SystemClock;
use pointlock::store::{PostgresOptions, PostgresStore};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio_postgres::NoTls;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(about = "Concurrency strategies for charges on one PostgreSQL")]
struct Args {
    /// A database URL of the cluster (superuser: databases are created and dropped).
    #[arg(long, env = "POINTLOCK_TEST_PG_URL")]
    url: String,
    /// The cluster's data directory, to find its processes and read their CPU
    /// time (needs read access to DATA/postmaster.pid and /proc); no CPU figures
    /// without it.
    #[arg(long, env = "POINTLOCK_TEST_PG_DATA")]
    pg_data: Option<PathBuf>,
    /// Connections per instance (every strategy).
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// Concurrent charges per cell.
    #[arg(long, default_value_t = 1_000)]
    requests: usize,
    /// Users of the spread load (random among 1..=USERS).
    #[arg(long, default_value_t = 10_000)]
    users: i64,
    /// Instance counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    instances: Vec<usize>,
    /// Loads to run.
    #[arg(long, value_delimiter = ',', default_value = "hot,spread")]
    loads: Vec<Load>,
    /// Strategies to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pointlock,pessimistic,pessimistic-cte,optimistic,sql"
    )]
    strategies: Vec<Strategy>,
    /// Rounds (every cell once per round; medians over rounds).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Optimistic: attempts before giving up.
    #[arg(long, default_value_t = 100)]
    optimistic_attempts: u32,
    /// The policy's inclusive maximum balance.
    #[arg(long, default_value_t = 10_000)]
    max_balance: u64,
    /// Statement timeout of every connection (like the server's default).
    #[arg(long, default_value_t = 5_000)]
    statement_timeout_ms: u64,
    /// Longest wait for a pooled connection (generous: a cell measures
    /// throughput, not refusals; pointlock's requests wait in its lock instead).
    #[arg(long, default_value_t = 60_000)]
    pool_wait_ms: u64,
    /// How requests are spread over the instances: `round-robin` (request i to
    /// instance i mod n, like a load balancer that ignores the user) or `by-user`
    /// (user mod n: routing by user id, every request of a user to one instance).
    #[arg(long, value_enum, default_value_t = Routing::RoundRobin)]
    routing: Routing,
    /// Do not create the users' rows before each cell.
    #[arg(long)]
    no_seed_rows: bool,
    /// Seed of the spread load's user draw (round r uses SEED + r).
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Databases are named PREFIX_STRATEGY.
    #[arg(long, default_value = "pg_strategies")]
    db_prefix: String,
    /// Where to write the results.
    #[arg(long, default_value = "target/pg_strategies/results.json")]
    json: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
enum Routing {
    RoundRobin,
    ByUser,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
enum Load {
    Hot,
    Spread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
enum Strategy {
    Pointlock,
    Pessimistic,
    PessimisticCte,
    Optimistic,
    Sql,
    Unconditional,
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().unwrap().get_name())
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().unwrap().get_name())
    }
}

impl Strategy {
    fn database(self, prefix: &str) -> String {
        format!("{prefix}_{}", self.to_string().replace('-', "_"))
    }

    fn uses_pointlock(self) -> bool {
        matches!(self, Self::Pointlock | Self::Unconditional)
    }
}

/// The user of the hot load.
const HOT_USER: i64 = 1;

/// The tables of the strategies (b)-(d): pointlock's schema (its migration 1),
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

const INSERT_IF_MISSING: &str =
    "INSERT INTO user_point (id, point, update_millis) VALUES ($1, 0, $2)
    ON CONFLICT (id) DO NOTHING";

const PESSIMISTIC_SELECT: &str = "SELECT point FROM user_point WHERE id = $1 FOR UPDATE";
const PESSIMISTIC_UPDATE: &str =
    "UPDATE user_point SET point = $2, update_millis = $3 WHERE id = $1";
const PESSIMISTIC_INSERT: &str = "INSERT INTO point_history (user_id, type, amount, time_millis)
    VALUES ($1, 'CHARGE', $2, $3)";
/// pointlock's write shape, without the condition (the row lock is held).
const PESSIMISTIC_CTE: &str = "WITH changed AS (
        UPDATE user_point SET point = $2, update_millis = $3
        WHERE id = $1
        RETURNING id)
    INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT id, 'CHARGE', $4, $3 FROM changed
    RETURNING id";

const OPTIMISTIC_SELECT: &str = "SELECT point, version FROM user_point WHERE id = $1";
/// pointlock's write shape, conditional on the version instead of the balance.
const OPTIMISTIC_UPDATE: &str = "WITH changed AS (
        UPDATE user_point SET point = $2, update_millis = $3, version = version + 1
        WHERE id = $1 AND version = $4
        RETURNING id)
    INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT id, 'CHARGE', $5, $3 FROM changed
    RETURNING id";

/// The policy in SQL: a charge may reach the maximum exactly (core's `Policy`).
const SQL_CHARGE: &str = "WITH changed AS (
        UPDATE user_point SET point = point + $2, update_millis = $3
        WHERE id = $1 AND point + $2 <= $4
        RETURNING id)
    INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT id, 'CHARGE', $2, $3 FROM changed
    RETURNING id";
/// The same for a user without a row: inserted, or (created meanwhile by
/// another charge) updated under the same condition.
const SQL_UPSERT: &str = "WITH changed AS (
        INSERT INTO user_point (id, point, update_millis)
        SELECT $1::bigint, $2::bigint, $3::bigint WHERE $2::bigint <= $4::bigint
        ON CONFLICT (id) DO UPDATE
            SET point = user_point.point + EXCLUDED.point, update_millis = EXCLUDED.update_millis
            WHERE user_point.point + EXCLUDED.point <= $4::bigint
        RETURNING id)
    INSERT INTO point_history (user_id, type, amount, time_millis)
    SELECT id, 'CHARGE', $2, $3 FROM changed
    RETURNING id";

/// A PostgreSQL error with the server's message, if it sent one.
fn db_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// The message of a strategy's error (the server's, for a database error).
fn describe(error: &DynError) -> String {
    match error.downcast_ref::<tokio_postgres::Error>() {
        Some(e) => db_message(e),
        None => error.to_string(),
    }
}

/// Panics with the server's message on a failed set-up or check statement.
trait OrPanic<T> {
    fn or_panic(self, what: &str) -> T;
}

impl<T> OrPanic<T> for Result<T, tokio_postgres::Error> {
    fn or_panic(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {}", db_message(&e)))
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `url` with its database replaced by `db` (`postgres://USER@HOST:PORT/DB[?…]`).
fn with_database(url: &str, db: &str) -> String {
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

async fn connect(url: &str) -> tokio_postgres::Client {
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
fn pool(url: &str, args: &Args) -> Pool {
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

/// What one charge came to.
#[derive(Debug, Default)]
struct Outcome {
    acked: bool,
    /// Conditional writes refused (optimistic: version misses).
    retries: u64,
    gave_up: bool,
    error: Option<String>,
}

impl Outcome {
    fn ok(retries: u64) -> Self {
        Self {
            acked: true,
            retries,
            ..Self::default()
        }
    }

    fn failed(error: impl fmt::Display) -> Self {
        Self {
            error: Some(error.to_string()),
            ..Self::default()
        }
    }
}

/// The instances of one cell.
enum Instances {
    Pointlock(Vec<Arc<PointService<PostgresStore>>>),
    Pooled(Strategy, Vec<Pool>),
}

#[derive(Clone, Copy)]
struct Ctx {
    policy: Policy,
    optimistic_attempts: u32,
}

impl Instances {
    async fn open(strategy: Strategy, url: &str, n: usize, args: &Args) -> Self {
        if strategy.uses_pointlock() {
            let mut services = Vec::new();
            for _ in 0..n {
                let store = PostgresStore::connect(
                    url,
                    PostgresOptions {
                        pool_size: args.pool_size,
                        statement_timeout: Duration::from_millis(args.statement_timeout_ms),
                        connect_timeout: Duration::from_millis(args.pool_wait_ms),
                        ..PostgresOptions::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
                let service = PointService::new(
                    store,
                    Policy::new(args.max_balance),
                    Arc::new(SystemClock::default()),
                );
                let service = if strategy == Strategy::Unconditional {
                    service.without_commit_condition()
                } else {
                    service
                };
                services.push(Arc::new(service));
            }
            Self::Pointlock(services)
        } else {
            Self::Pooled(strategy, (0..n).map(|_| pool(url, args)).collect())
        }
    }

    /// Commits refused by the store's condition, summed over the instances
    /// (pointlock; the others count their retries per charge).
    fn service_conflicts(&self) -> u64 {
        match self {
            Self::Pointlock(v) => v.iter().map(|s| s.commit_conflicts()).sum(),
            Self::Pooled(..) => 0,
        }
    }

    async fn charge(&self, instance: usize, user: i64, amount: i64, ctx: Ctx) -> Outcome {
        match self {
            Self::Pointlock(services) => {
                let service = &services[instance];
                let id = UserId::new(user as u64).expect("a valid id");
                let amount = Amount::new(amount as u64).expect("a valid amount");
                let held = Arc::new(service.lock().lock(id).await);
                match service.charge(held, amount).await {
                    Ok(_) => Outcome::ok(0),
                    Err(PointError::WriteConflict { .. }) => Outcome {
                        gave_up: true,
                        ..Outcome::default()
                    },
                    Err(e) => Outcome::failed(e),
                }
            }
            Self::Pooled(strategy, pools) => {
                let pool = &pools[instance];
                let result = match strategy {
                    Strategy::Pessimistic => pessimistic(pool, user, amount, ctx, false).await,
                    Strategy::PessimisticCte => pessimistic(pool, user, amount, ctx, true).await,
                    Strategy::Optimistic => optimistic(pool, user, amount, ctx).await,
                    Strategy::Sql => in_sql(pool, user, amount, ctx).await,
                    Strategy::Pointlock | Strategy::Unconditional => unreachable!(),
                };
                result.unwrap_or_else(|e| Outcome::failed(describe(&e)))
            }
        }
    }
}

type DynError = Box<dyn std::error::Error + Send + Sync>;

/// (b) `BEGIN; SELECT … FOR UPDATE; UPDATE; INSERT; COMMIT` (or the UPDATE and
/// INSERT as one CTE), the policy in Rust between the read and the write.
async fn pessimistic(
    pool: &Pool,
    user: i64,
    amount: i64,
    ctx: Ctx,
    cte: bool,
) -> Result<Outcome, DynError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let select = tx.prepare_cached(PESSIMISTIC_SELECT).await?;
    let mut row = tx.query_opt(&select, &[&user]).await?;
    if row.is_none() {
        let insert = tx.prepare_cached(INSERT_IF_MISSING).await?;
        tx.execute(&insert, &[&user, &now_millis()]).await?;
        row = tx.query_opt(&select, &[&user]).await?;
    }
    let balance: i64 = row.ok_or("row missing after insert")?.get(0);
    let next = match ctx
        .policy
        .charge(balance as u64, Amount::new(amount as u64).expect("amount"))
    {
        Ok(next) => next as i64,
        Err(refused) => {
            tx.rollback().await?;
            return Ok(Outcome::failed(refused));
        }
    };
    let now = now_millis();
    if cte {
        let write = tx.prepare_cached(PESSIMISTIC_CTE).await?;
        let rows = tx.query(&write, &[&user, &next, &now, &amount]).await?;
        if rows.is_empty() {
            return Err("the locked row vanished".into());
        }
    } else {
        let update = tx.prepare_cached(PESSIMISTIC_UPDATE).await?;
        let insert = tx.prepare_cached(PESSIMISTIC_INSERT).await?;
        tx.execute(&update, &[&user, &next, &now]).await?;
        tx.execute(&insert, &[&user, &amount, &now]).await?;
    }
    tx.commit().await?;
    Ok(Outcome::ok(0))
}

/// (c) read point and version, policy in Rust, write if the version is unchanged;
/// retry from the read otherwise, bounded.
async fn optimistic(pool: &Pool, user: i64, amount: i64, ctx: Ctx) -> Result<Outcome, DynError> {
    let client = pool.get().await?;
    let select = client.prepare_cached(OPTIMISTIC_SELECT).await?;
    let update = client.prepare_cached(OPTIMISTIC_UPDATE).await?;
    let mut retries = 0;
    for _ in 0..ctx.optimistic_attempts {
        let Some(row) = client.query_opt(&select, &[&user]).await? else {
            let insert = client.prepare_cached(INSERT_IF_MISSING).await?;
            client.execute(&insert, &[&user, &now_millis()]).await?;
            continue;
        };
        let (balance, version): (i64, i64) = (row.get(0), row.get(1));
        let next = match ctx
            .policy
            .charge(balance as u64, Amount::new(amount as u64).expect("amount"))
        {
            Ok(next) => next as i64,
            Err(refused) => return Ok(Outcome::failed(refused)),
        };
        let rows = client
            .query(&update, &[&user, &next, &now_millis(), &version, &amount])
            .await?;
        if !rows.is_empty() {
            return Ok(Outcome::ok(retries));
        }
        retries += 1;
    }
    Ok(Outcome {
        retries,
        gave_up: true,
        ..Outcome::default()
    })
}

/// (d) one conditional UPDATE with the policy in SQL and the history in the same
/// statement.
async fn in_sql(pool: &Pool, user: i64, amount: i64, ctx: Ctx) -> Result<Outcome, DynError> {
    let client = pool.get().await?;
    let charge = client.prepare_cached(SQL_CHARGE).await?;
    let max = ctx.policy.max_balance as i64;
    let rows = client
        .query(&charge, &[&user, &amount, &now_millis(), &max])
        .await?;
    if !rows.is_empty() {
        return Ok(Outcome::ok(0));
    }
    // No row written: the user has no row (yet), or the policy refused. The
    // upsert settles both in one statement, whatever another charge of the same
    // new user does meanwhile; no row from it means the policy refused.
    let upsert = client.prepare_cached(SQL_UPSERT).await?;
    let rows = client
        .query(&upsert, &[&user, &amount, &now_millis(), &max])
        .await?;
    if rows.is_empty() {
        return Ok(Outcome::failed(format!(
            "max balance exceeded: charge {amount} > max {max} - balance"
        )));
    }
    Ok(Outcome::ok(0))
}

/// CPU time read from `/proc`.
struct CpuProbe {
    postmaster_pid_file: Option<PathBuf>,
    ticks_per_second: f64,
}

/// CPU seconds of a set of processes, two ways.
#[derive(Clone, Copy, Debug, Default)]
struct CpuTime {
    /// utime + stime from `/proc/PID/stat` (clock ticks, usually 10 ms), plus
    /// the postmaster's reaped children (cutime + cstime).
    ticks: f64,
    /// Time on a CPU from `/proc/PID/schedstat` (nanoseconds), plus the same
    /// reaped children's ticks.
    sched: f64,
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, before: CpuTime) -> CpuTime {
        CpuTime {
            ticks: self.ticks - before.ticks,
            sched: self.sched - before.sched,
        }
    }
}

/// Fields 4.. of `/proc/PID/stat`: `fields[i]` is field `i + 4` (ppid = 4,
/// utime = 14, stime = 15, cutime = 16, cstime = 17).
fn stat_fields(path: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    // After the command name (which may hold spaces) and the state.
    let rest = &text[text.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse::<i64>().unwrap_or(0).max(0) as u64)
            .collect(),
    )
}

/// Nanoseconds on a CPU, from a `schedstat` file.
fn schedstat_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl CpuProbe {
    fn new(pg_data: Option<PathBuf>) -> Self {
        let ticks_per_second = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            postmaster_pid_file: pg_data.map(|d| d.join("postmaster.pid")),
            ticks_per_second,
        }
    }

    /// Every process of the cluster: the postmaster (its pid from
    /// `DATA/postmaster.pid`) and every process whose parent it is; plus the
    /// time of the children the postmaster has reaped, so that a backend that
    /// exits mid-cell keeps counting.
    fn postgres(&self) -> Option<CpuTime> {
        let text = std::fs::read_to_string(self.postmaster_pid_file.as_ref()?).ok()?;
        let postmaster = text.lines().next()?.trim().to_owned();
        let postmaster_pid: u64 = postmaster.parse().ok()?;
        let master = stat_fields(&format!("/proc/{postmaster}/stat"))?;
        let reaped = (master[12] + master[13]) as f64 / self.ticks_per_second;
        let mut ticks = master[10] + master[11];
        let mut ns = schedstat_ns(&format!("/proc/{postmaster}/schedstat"));
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str() else { continue };
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == postmaster {
                continue;
            }
            if let Some(fields) = stat_fields(&format!("/proc/{pid}/stat")) {
                if fields[0] == postmaster_pid {
                    ticks += fields[10] + fields[11];
                    ns += schedstat_ns(&format!("/proc/{pid}/schedstat"));
                }
            }
        }
        Some(CpuTime {
            ticks: ticks as f64 / self.ticks_per_second + reaped,
            sched: ns as f64 / 1e9 + reaped,
        })
    }

    /// This process (every thread).
    fn own(&self) -> CpuTime {
        let ticks = stat_fields("/proc/self/stat")
            .map_or(0.0, |f| (f[10] + f[11]) as f64 / self.ticks_per_second);
        let ns: u64 = std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.flatten()
                    .map(|t| schedstat_ns(&format!("{}/schedstat", t.path().display())))
                    .sum()
            })
            .unwrap_or(0);
        CpuTime {
            ticks,
            sched: ns as f64 / 1e9,
        }
    }
}

/// What the check of one cell found.
#[derive(Debug, Default)]
struct Check {
    acked: i64,
    balance_total: i64,
    /// Acknowledged charges missing from the balances.
    lost: i64,
    /// Balance that no acknowledged charge explains.
    phantom: i64,
    /// Users whose history does not replay to their balance.
    history_mismatch: i64,
    history_rows: i64,
}

async fn verify(client: &tokio_postgres::Client, acked: &HashMap<i64, i64>) -> Check {
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
async fn wait_backends_gone(admin: &tokio_postgres::Client) {
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
async fn reset(
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

async fn create_database(
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

#[derive(Debug)]
struct Cell {
    strategy: Strategy,
    load: Load,
    instances: usize,
    round: usize,
    wall: Duration,
    acked: u64,
    retries: u64,
    gave_up: u64,
    errors: u64,
    error_samples: Vec<String>,
    check: Check,
    pg_cpu: Option<CpuTime>,
    own_cpu: CpuTime,
    p50: Duration,
    p99: Duration,
}

impl Cell {
    fn throughput(&self) -> f64 {
        self.acked as f64 / self.wall.as_secs_f64()
    }

    fn json(&self) -> Value {
        json!({
            "strategy": self.strategy.to_string(),
            "load": self.load.to_string(),
            "instances": self.instances,
            "round": self.round,
            "wall_ms": self.wall.as_secs_f64() * 1e3,
            "throughput": self.throughput(),
            "acked": self.acked,
            "retries": self.retries,
            "gave_up": self.gave_up,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "lost": self.check.lost,
            "phantom": self.check.phantom,
            "history_mismatch": self.check.history_mismatch,
            "history_rows": self.check.history_rows,
            "balance_total": self.check.balance_total,
            "acked_total": self.check.acked,
            "pg_cpu_ms": self.pg_cpu.map(|c| c.sched * 1e3),
            "pg_cpu_ticks_ms": self.pg_cpu.map(|c| c.ticks * 1e3),
            "client_cpu_ms": self.own_cpu.sched * 1e3,
            "client_cpu_ticks_ms": self.own_cpu.ticks * 1e3,
            "p50_ms": self.p50.as_secs_f64() * 1e3,
            "p99_ms": self.p99.as_secs_f64() * 1e3,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_cell(
    admin: &tokio_postgres::Client,
    control: &tokio_postgres::Client,
    db_url: &str,
    strategy: Strategy,
    load: Load,
    n: usize,
    round: usize,
    args: &Args,
    probe: &CpuProbe,
) -> Cell {
    let warm_per_instance = args.pool_size as i64;
    let warm_users = warm_per_instance * n as i64;
    let first_warm_user = args.users.max(HOT_USER) + 1;
    reset(admin, control, args, warm_users).await;
    let instances = Arc::new(Instances::open(strategy, db_url, n, args).await);
    let ctx = Ctx {
        policy: Policy::new(args.max_balance),
        optimistic_attempts: args.optimistic_attempts,
    };
    let mut acked: HashMap<i64, i64> = HashMap::new();

    // Warm-up: every connection of every pool opened and its statements prepared.
    for _ in 0..2 {
        let mut tasks = Vec::new();
        for instance in 0..n {
            for k in 0..warm_per_instance {
                let user = first_warm_user + instance as i64 * warm_per_instance + k;
                let instances = Arc::clone(&instances);
                tasks.push(tokio::spawn(async move {
                    (user, instances.charge(instance, user, 1, ctx).await)
                }));
            }
        }
        for task in tasks {
            let (user, outcome) = task.await.expect("warm-up task");
            if let Some(error) = &outcome.error {
                panic!("warm-up charge failed ({strategy}): {error}");
            }
            if outcome.acked {
                *acked.entry(user).or_default() += 1;
            }
        }
    }

    // The users of the measured charges: the same draw for every strategy of a round.
    let mut rng = fastrand::Rng::with_seed(args.seed + round as u64);
    let users: Vec<i64> = (0..args.requests)
        .map(|_| match load {
            Load::Hot => HOT_USER,
            Load::Spread => rng.i64(1..=args.users),
        })
        .collect();

    let conflicts_before = instances.service_conflicts();
    let routing = args.routing;
    let barrier = Arc::new(Barrier::new(args.requests + 1));
    let mut tasks = Vec::with_capacity(args.requests);
    for (i, &user) in users.iter().enumerate() {
        let instances = Arc::clone(&instances);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let instance = match routing {
                Routing::RoundRobin => i % n,
                Routing::ByUser => user as usize % n,
            };
            let outcome = instances.charge(instance, user, 1, ctx).await;
            (outcome, Instant::now())
        }));
    }
    // Let every task reach the barrier before reading the clocks.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pg_before = probe.postgres();
    let own_before = probe.own();
    barrier.wait().await;
    let start = Instant::now();
    let mut outcomes = Vec::with_capacity(args.requests);
    for task in tasks {
        outcomes.push(task.await.expect("charge task"));
    }
    let wall = start.elapsed();
    let pg_after = probe.postgres();
    let own_after = probe.own();

    let mut done: Vec<Duration> = outcomes.iter().map(|(_, at)| *at - start).collect();
    done.sort_unstable();
    let pct = |p: f64| done[((done.len() as f64 * p).ceil() as usize).clamp(1, done.len()) - 1];
    let mut cell = Cell {
        strategy,
        load,
        instances: n,
        round,
        wall,
        acked: 0,
        retries: instances.service_conflicts() - conflicts_before,
        gave_up: 0,
        errors: 0,
        error_samples: Vec::new(),
        check: Check::default(),
        pg_cpu: pg_before.zip(pg_after).map(|(b, a)| a - b),
        own_cpu: own_after - own_before,
        p50: pct(0.50),
        p99: pct(0.99),
    };
    for ((outcome, _), &user) in outcomes.iter().zip(&users) {
        cell.retries += outcome.retries;
        if outcome.acked {
            cell.acked += 1;
            *acked.entry(user).or_default() += 1;
        }
        if outcome.gave_up {
            cell.gave_up += 1;
        }
        if let Some(error) = &outcome.error {
            cell.errors += 1;
            if cell.error_samples.len() < 3 && !cell.error_samples.contains(error) {
                cell.error_samples.push(error.clone());
            }
        }
    }
    // The pools close their connections as the last clone of the instances goes.
    drop(instances);
    cell.check = verify(control, &acked).await;
    // The next cell starts once these backends have exited (their exit costs CPU).
    wait_backends_gone(admin).await;
    cell
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn summarize(cells: &[Cell], args: &Args) -> Vec<Value> {
    let mut rows = Vec::new();
    for &load in &args.loads {
        for &n in &args.instances {
            for &strategy in &args.strategies {
                let of: Vec<&Cell> = cells
                    .iter()
                    .filter(|c| c.strategy == strategy && c.load == load && c.instances == n)
                    .collect();
                if of.is_empty() {
                    continue;
                }
                let col = |f: &dyn Fn(&Cell) -> f64| -> (f64, f64, f64) {
                    let mut v: Vec<f64> = of.iter().map(|c| f(c)).collect();
                    let m = median(&mut v);
                    (m, v[0], v[v.len() - 1])
                };
                let wall = col(&|c| c.wall.as_secs_f64() * 1e3);
                let tput = col(&|c| c.throughput());
                let retries = col(&|c| c.retries as f64);
                let pg = if of.iter().all(|c| c.pg_cpu.is_some()) {
                    Some(col(&|c| c.pg_cpu.unwrap_or_default().sched * 1e3))
                } else {
                    None
                };
                let own = col(&|c| c.own_cpu.sched * 1e3);
                let p99 = col(&|c| c.p99.as_secs_f64() * 1e3);
                rows.push(json!({
                    "strategy": strategy.to_string(),
                    "load": load.to_string(),
                    "instances": n,
                    "rounds": of.len(),
                    "wall_ms": {"median": wall.0, "min": wall.1, "max": wall.2},
                    "throughput": {"median": tput.0, "min": tput.1, "max": tput.2},
                    "retries": {"median": retries.0, "min": retries.1, "max": retries.2},
                    "pg_cpu_ms": pg.map(|p| json!({"median": p.0, "min": p.1, "max": p.2})),
                    "client_cpu_ms": {"median": own.0, "min": own.1, "max": own.2},
                    "p99_ms": {"median": p99.0, "min": p99.1, "max": p99.2},
                    "gave_up": of.iter().map(|c| c.gave_up).sum::<u64>(),
                    "errors": of.iter().map(|c| c.errors).sum::<u64>(),
                    "lost": of.iter().map(|c| c.check.lost).sum::<i64>(),
                    "phantom": of.iter().map(|c| c.check.phantom).sum::<i64>(),
                    "history_mismatch": of.iter().map(|c| c.check.history_mismatch).sum::<i64>(),
                }));
            }
        }
    }
    rows
}

fn print_table(rows: &[Value]) {
    println!();
    println!("| load | instances | strategy | wall ms (min–max) | charges/s (min–max) | retries (min–max) | gave up | errors | lost | phantom | history ≠ balance | PostgreSQL CPU ms (min–max) | client CPU ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let m = |k: &str| {
            let v = &r[k];
            format!(
                "{:.0} ({:.0}–{:.0})",
                v["median"].as_f64().unwrap_or(0.0),
                v["min"].as_f64().unwrap_or(0.0),
                v["max"].as_f64().unwrap_or(0.0)
            )
        };
        let pg = if r["pg_cpu_ms"].is_null() {
            "-".to_string()
        } else {
            m("pg_cpu_ms")
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
            r["load"].as_str().unwrap_or(""),
            r["instances"],
            r["strategy"].as_str().unwrap_or(""),
            m("wall_ms"),
            m("throughput"),
            m("retries"),
            r["gave_up"],
            r["errors"],
            r["lost"],
            r["phantom"],
            r["history_mismatch"],
            pg,
            r["client_cpu_ms"]["median"].as_f64().unwrap_or(0.0),
            r["p99_ms"]["median"].as_f64().unwrap_or(0.0),
        );
    }
}

/// Same-run ratios: pointlock against the best of the pessimistic and optimistic
/// strategies, and against the best of all.
fn print_ratios(rows: &[Value]) -> Vec<Value> {
    let tput = |load: &str, n: u64, strategy: &str| {
        rows.iter()
            .find(|r| r["load"] == load && r["instances"] == n && r["strategy"] == strategy)
            .and_then(|r| r["throughput"]["median"].as_f64())
    };
    let mut out = Vec::new();
    println!();
    for load in ["hot", "spread"] {
        for n in [1u64, 4] {
            let Some(ours) = tput(load, n, "pointlock") else {
                continue;
            };
            let best = |names: &[&'static str]| {
                names
                    .iter()
                    .filter_map(|s| tput(load, n, s).map(|t| (t, *s)))
                    .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap())
            };
            let bc = best(&["pessimistic", "pessimistic-cte", "optimistic"]);
            let all = best(&["pessimistic", "pessimistic-cte", "optimistic", "sql"]);
            if let (Some(bc), Some(all)) = (bc, all) {
                println!(
                    "{load} x{n}: pointlock / best of (b),(c) [{}] = {:.2}; pointlock / best of all [{}] = {:.2}",
                    bc.1,
                    ours / bc.0,
                    all.1,
                    ours / all.0
                );
                out.push(json!({
                    "load": load, "instances": n,
                    "best_bc": bc.1, "ratio_bc": ours / bc.0,
                    "best_all": all.1, "ratio_all": ours / all.0,
                }));
            }
        }
    }
    out
}

/// The share of both CPUs busy (not idle, not waiting for I/O) over `window`,
/// from `/proc/stat`: how quiet the machine was before the run.
async fn cpu_busy_percent(window: Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64)> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = text
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4)?;
        Some((total, idle))
    }
    let (t0, i0) = sample()?;
    tokio::time::sleep(window).await;
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0)?.max(1);
    Some(100.0 * (total - (i1 - i0)) as f64 / total as f64)
}

fn machine() -> Value {
    let read = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "uptime": read("uptime", &[]),
        "kernel": read("uname", &["-r"]),
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(args.users >= 1 && args.requests >= 1 && args.pool_size >= 1);
    let probe = CpuProbe::new(args.pg_data.clone());
    if probe.postgres().is_none() {
        eprintln!("note: no PostgreSQL CPU figures (pass --pg-data DIR or POINTLOCK_TEST_PG_DATA)");
    }
    let busy_before = cpu_busy_percent(Duration::from_secs(2)).await;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "before the run: CPUs {:.0}% busy over 2 s; load average {}",
        busy_before.unwrap_or(f64::NAN),
        load_before.trim()
    );
    let admin = connect(&args.url).await;
    let version: String = admin
        .query_one("SHOW server_version", &[])
        .await
        .or_panic("server version")
        .get(0);
    let settings: Vec<String> = admin
        .query(
            "SELECT name || '=' || setting FROM pg_settings WHERE name IN
             ('fsync','synchronous_commit','shared_buffers','max_connections','wal_level','checkpoint_timeout','max_wal_size')
             ORDER BY name",
            &[],
        )
        .await
        .or_panic("settings")
        .iter()
        .map(|r| r.get(0))
        .collect();
    eprintln!(
        "PostgreSQL {version} ({}); {} requests per cell, {} users, pool {} per instance, instances {:?} ({:?}), {} rounds",
        settings.join(", "),
        args.requests,
        args.users,
        args.pool_size,
        args.instances,
        args.routing,
        args.rounds
    );

    let mut controls = HashMap::new();
    for &strategy in &args.strategies {
        create_database(&admin, &args.url, strategy, &args).await;
        let db_url = with_database(&args.url, &strategy.database(&args.db_prefix));
        controls.insert(strategy, (connect(&db_url).await, db_url));
    }

    let mut cells = Vec::new();
    let started = Instant::now();
    for round in 1..=args.rounds {
        for &load in &args.loads {
            for &n in &args.instances {
                // A rotated order each round: no strategy always runs first.
                let k = args.strategies.len();
                for j in 0..k {
                    let strategy = args.strategies[(j + round - 1) % k];
                    let (control, db_url) = &controls[&strategy];
                    let cell = run_cell(
                        &admin, control, db_url, strategy, load, n, round, &args, &probe,
                    )
                    .await;
                    eprintln!(
                        "round {round} {load:>6} x{n} {strategy:<16} {:>8.1} ms {:>7.0}/s retries {:>6} gave up {:>3} errors {:>3} lost {} phantom {} hist≠ {} pg cpu {} ms",
                        cell.wall.as_secs_f64() * 1e3,
                        cell.throughput(),
                        cell.retries,
                        cell.gave_up,
                        cell.errors,
                        cell.check.lost,
                        cell.check.phantom,
                        cell.check.history_mismatch,
                        cell.pg_cpu.map_or("-".into(), |c| format!("{:.0} (ticks {:.0})", c.sched * 1e3, c.ticks * 1e3)),
                    );
                    for sample in &cell.error_samples {
                        eprintln!("    error: {sample}");
                    }
                    cells.push(cell);
                }
            }
        }
    }
    let rows = summarize(&cells, &args);
    print_table(&rows);
    let ratios = print_ratios(&rows);

    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).expect("results directory");
    }
    let out = json!({
        "postgres": {"version": version, "settings": settings},
        "machine": machine(),
        "before": {"cpu_busy_percent": busy_before, "loadavg": load_before.trim()},
        "args": {
            "requests": args.requests, "users": args.users, "pool_size": args.pool_size,
            "instances": args.instances, "rounds": args.rounds,
            "optimistic_attempts": args.optimistic_attempts, "max_balance": args.max_balance,
            "seed_rows": !args.no_seed_rows, "seed": args.seed,
            "routing": format!("{:?}", args.routing),
            "strategies": args.strategies.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        },
        "elapsed_s": started.elapsed().as_secs_f64(),
        "summary": rows,
        "ratios": ratios,
        "cells": cells.iter().map(Cell::json).collect::<Vec<_>>(),
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&out).unwrap()).expect("write json");
    eprintln!("wrote {}", args.json.display());

    let bad: i64 = cells
        .iter()
        .filter(|c| c.strategy != Strategy::Unconditional)
        .map(|c| c.check.lost + c.check.phantom + c.check.history_mismatch)
        .sum();
    if bad > 0 {
        eprintln!("FAILED: lost or phantom updates, or histories that do not replay ({bad})");
        std::process::exit(1);
    }
}
