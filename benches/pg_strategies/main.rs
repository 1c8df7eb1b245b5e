//! The strategy benchmark: ways of making concurrent
//! charges exact on one PostgreSQL, side by side, in one run.
//!
//! ```sh
//! ./benches/pg_strategies.sh --rounds 1       # a cluster and a redis-server of its own
//! # or by hand, on a running cluster:
//! scripts/pg-cluster.sh start target/pgs && set -a && . target/pgs/env && set +a
//! cargo run --release --locked -p pointlock-pg-strategies --features test-util -- --help
//! scripts/pg-cluster.sh stop target/pgs
//! ```
//!
//! A *cell* is one strategy × one load × one number of instances: `--requests`
//! (1,000) charges of 1, started at once (every task waits on one barrier), either
//! all on ONE user (`hot`) or on users drawn at random among `--users` (10,000;
//! `spread`; the same draw for every strategy of a round). An *instance* is what
//! one server process would own: its own connection pool of `--pool-size` (16)
//! connections and, for pointlock, its own `PointService` and in-process
//! `KeyedLock` (for `redis-lock`, its own Redis connection). Instances live in
//! this one process; request `i` goes to instance `i % n` (`--routing by-user`:
//! instance `user % n`, as a load balancer routing by user id would send it).
//!
//! Strategies (each in its own database, created fresh by this benchmark, with
//! the same two tables; rows of every user exist before each cell, balance 0,
//! unless `--no-seed-rows`):
//!
//! - `pointlock` (a): the product: `service.charge(Arc::new(service.lock().lock(user).await), 1)`
//!   over a `PostgresStore` (each charge placed in the store's queue and decided
//!   in a batch transaction that locks the users' rows in id order; the
//!   charges in flight at once share transactions).
//! - `pessimistic` (b): `BEGIN; SELECT point … FOR UPDATE; (policy in Rust) UPDATE …;
//!   INSERT history; COMMIT` (the brief's shape: five round trips).
//! - `pessimistic-cte` (b'): the same with the UPDATE and the history INSERT in one
//!   statement (pointlock's write shape: four round trips).
//! - `optimistic` (c): a `version` column; read point and version, policy in Rust,
//!   `UPDATE … SET point, version = version + 1 WHERE id AND version = $seen` with
//!   the history INSERT in the same statement; 0 rows: read again and retry, at
//!   most `--optimistic-attempts` (100) times, then give up.
//! - `sql` (d): one statement, policy in SQL: `UPDATE … SET point = point + $2 WHERE
//!   id = $1 AND point + $2 <= $max` with the history INSERT in the same CTE.
//! - `redis-lock` (e): the distributed lock of the course's seeds, for
//!   comparison: a Redis lock per user (`SET lock:<user> <token> NX PX
//!   --redis-lock-ttl-ms`, retried after a short randomized back-off until
//!   acquired, at most `--redis-lock-wait-ms`, then give up), released by a
//!   compare-and-delete Lua script (`EVAL`), around (b)'s write. Needs
//!   `--redis-url`; left out of the default set without it. Its retries are the
//!   refused `SET NX`s; its Redis server's CPU is measured with `--redis-pid`.
//! - `unconditional` (negative control, not in the default set; built with the
//!   `test-util` feature): pointlock deciding each charge on a balance read
//!   before its turn (the store's decision on the locked row switched off),
//!   which must lose updates with several instances: it shows that the checker
//!   below has teeth (its cells do not fail the run; any other cell with a lost
//!   or phantom update, or a history that does not replay, makes the benchmark
//!   exit 1).
//!
//! A missing row (only with `--no-seed-rows`): pessimistic, optimistic and
//! redis-lock create it with `INSERT … ON CONFLICT DO NOTHING` and take their
//! path again; `sql` follows its UPDATE that found no row with one conditional
//! upsert (the same CTE); pointlock needs no extra step (its write from 0 is an
//! upsert).
//!
//! Per cell: wall time from the barrier to the last answer, throughput (acknowledged
//! charges per second), retries (pointlock: commits refused by the store's condition;
//! optimistic: version misses; redis-lock: refused acquisitions), give-ups and
//! errors, and the check: every user's balance equals the charges acknowledged
//! for it (`lost` counts acknowledged charges missing from balances, `phantom`
//! balance nobody acknowledged) and its history replays to its balance. PostgreSQL
//! CPU: user + system time of every process of the cluster from `/proc/PID/stat`
//! before and after the cell (the postmaster, read from `DATA/postmaster.pid`,
//! with its children's reaped time, and every process whose parent it is); this
//! process's own CPU and the Redis server's the same way.
//!
//! Before each cell: the strategy's tables are truncated and re-seeded, `VACUUM
//! ANALYZE`d (autovacuum is off on them: each cell starts from fresh tables) and
//! the cluster checkpointed; the instances' pools are opened and warmed (two
//! passes of `pool size` charges per instance on users outside the measured ones,
//! so each connection has prepared its statements). Strategies run in a rotated
//! order each round. Output: a markdown table of medians (and min–max) and a JSON
//! file (`--json`) that `scripts/plot_performance.py` draws.
//!
//! The modules: [`strategies`] (a)-(d) and the instances of a cell, [`redis_lock`]
//! (e), [`database`] the databases and the check, [`cell`] one measured cell,
//! [`cpu`] CPU time from `/proc`, [`report`] the table, ratios and JSON.

mod cell;
mod cpu;
mod database;
mod redis_lock;
mod report;
mod strategies;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::cpu::{cpu_busy_percent, machine, CpuProbe};
use crate::database::{connect, create_database, with_database, OrPanic};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(about = "Concurrency strategies for charges on one PostgreSQL")]
pub(crate) struct Args {
    /// A database URL of the cluster (superuser: databases are created and dropped).
    #[arg(long, env = "POINTLOCK_TEST_PG_URL")]
    pub url: String,
    /// The cluster's data directory, to find its processes and read their CPU
    /// time (needs read access to DATA/postmaster.pid and /proc); no CPU figures
    /// without it.
    #[arg(long, env = "POINTLOCK_TEST_PG_DATA")]
    pub pg_data: Option<PathBuf>,
    /// Connections per instance (every strategy).
    #[arg(long, default_value_t = 16)]
    pub pool_size: usize,
    /// Concurrent charges per cell.
    #[arg(long, default_value_t = 1_000)]
    pub requests: usize,
    /// Users of the spread load (random among 1..=USERS).
    #[arg(long, default_value_t = 10_000)]
    pub users: i64,
    /// Instance counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub instances: Vec<usize>,
    /// Loads to run.
    #[arg(long, value_delimiter = ',', default_value = "hot,spread")]
    pub loads: Vec<Load>,
    /// Strategies to run [default: pointlock,pessimistic,pessimistic-cte,
    /// optimistic,sql, and redis-lock when --redis-url is given].
    #[arg(long, value_delimiter = ',')]
    pub strategies: Option<Vec<Strategy>>,
    /// Rounds (every cell once per round; medians over rounds).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Optimistic: attempts before giving up.
    #[arg(long, default_value_t = 100)]
    pub optimistic_attempts: u32,
    /// The policy's inclusive maximum balance.
    #[arg(long, default_value_t = 10_000)]
    pub max_balance: u64,
    /// Statement timeout of every connection (like the server's default).
    #[arg(long, default_value_t = 5_000)]
    pub statement_timeout_ms: u64,
    /// Longest wait for a pooled connection (generous: a cell measures
    /// throughput, not refusals; pointlock's requests wait in its lock instead).
    #[arg(long, default_value_t = 60_000)]
    pub pool_wait_ms: u64,
    /// How requests are spread over the instances: `round-robin` (request i to
    /// instance i mod n, like a load balancer that ignores the user) or `by-user`
    /// (user mod n: routing by user id, every request of a user to one instance).
    #[arg(long, value_enum, default_value_t = Routing::RoundRobin)]
    pub routing: Routing,
    /// Do not create the users' rows before each cell.
    #[arg(long)]
    pub no_seed_rows: bool,
    /// Seed of the spread load's user draw (round r uses SEED + r).
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
    /// Databases are named PREFIX_STRATEGY.
    #[arg(long, default_value = "pg_strategies")]
    pub db_prefix: String,
    /// Where to write the results.
    #[arg(long, default_value = "target/pg_strategies/results.json")]
    pub json: PathBuf,
    /// Redis for strategy (e), e.g. redis://127.0.0.1:6379/ (loopback; keys
    /// `lock:<user>`, deleted before each cell).
    #[arg(long, env = "POINTLOCK_BENCH_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The Redis server's pid, to read its CPU time per cell.
    #[arg(long, env = "POINTLOCK_BENCH_REDIS_PID")]
    pub redis_pid: Option<u32>,
    /// Redis lock: its expiry (`PX`): a holder that stalls longer loses it.
    #[arg(long, default_value_t = 5_000)]
    pub redis_lock_ttl_ms: u64,
    /// Redis lock: the first back-off after a refused `SET NX`, doubled after
    /// each refusal up to --redis-backoff-max-ms; each sleep is drawn uniformly
    /// between half and all of it.
    #[arg(long, default_value_t = 1)]
    pub redis_backoff_ms: u64,
    /// Redis lock: the longest back-off.
    #[arg(long, default_value_t = 16)]
    pub redis_backoff_max_ms: u64,
    /// Redis lock: the longest wait to acquire, then give up.
    #[arg(long, default_value_t = 60_000)]
    pub redis_lock_wait_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub(crate) enum Routing {
    RoundRobin,
    ByUser,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub(crate) enum Load {
    Hot,
    Spread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub(crate) enum Strategy {
    Pointlock,
    Pessimistic,
    PessimisticCte,
    Optimistic,
    Sql,
    RedisLock,
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
    pub fn database(self, prefix: &str) -> String {
        format!("{prefix}_{}", self.to_string().replace('-', "_"))
    }

    pub fn uses_pointlock(self) -> bool {
        matches!(self, Self::Pointlock | Self::Unconditional)
    }
}

/// The user of the hot load.
pub(crate) const HOT_USER: i64 = 1;

/// The strategies to run: `--strategies`, or the default set (with
/// `redis-lock` only when a Redis URL is given). Exits on a strategy this run
/// cannot have.
fn strategies(args: &Args) -> Vec<Strategy> {
    let Some(chosen) = &args.strategies else {
        let mut all = vec![
            Strategy::Pointlock,
            Strategy::Pessimistic,
            Strategy::PessimisticCte,
            Strategy::Optimistic,
            Strategy::Sql,
        ];
        if args.redis_url.is_some() {
            all.push(Strategy::RedisLock);
        } else {
            eprintln!("note: strategy redis-lock (e) skipped: no --redis-url");
        }
        return all;
    };
    if chosen.contains(&Strategy::RedisLock) && args.redis_url.is_none() {
        eprintln!("--strategies redis-lock needs --redis-url (or POINTLOCK_BENCH_REDIS_URL)");
        std::process::exit(2);
    }
    if chosen.contains(&Strategy::Unconditional) && !cfg!(feature = "test-util") {
        eprintln!("--strategies unconditional needs a build with --features test-util");
        std::process::exit(2);
    }
    chosen.clone()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(args.users >= 1 && args.requests >= 1 && args.pool_size >= 1);
    assert!(args.redis_backoff_ms >= 1 && args.redis_backoff_max_ms >= args.redis_backoff_ms);
    let chosen = strategies(&args);
    let probe = CpuProbe::new(args.pg_data.clone(), args.redis_pid);
    if probe.postgres().is_none() {
        eprintln!("note: no PostgreSQL CPU figures (pass --pg-data DIR or POINTLOCK_TEST_PG_DATA)");
    }
    if chosen.contains(&Strategy::RedisLock) && probe.redis().is_none() {
        eprintln!("note: no Redis CPU figures (pass --redis-pid PID or POINTLOCK_BENCH_REDIS_PID)");
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
    for &strategy in &chosen {
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
                let k = chosen.len();
                for j in 0..k {
                    let strategy = chosen[(j + round - 1) % k];
                    let (control, db_url) = &controls[&strategy];
                    let spec = cell::Spec {
                        strategy,
                        load,
                        instances: n,
                        round,
                    };
                    let cell = cell::run(&admin, control, db_url, spec, &args, &probe).await;
                    eprintln!("{}", cell.line());
                    for sample in &cell.error_samples {
                        eprintln!("    error: {sample}");
                    }
                    cells.push(cell);
                }
            }
        }
    }
    let rows = report::summarize(&cells, &args, &chosen);
    report::print_table(&rows);
    let ratios = report::print_ratios(&rows);

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
            "strategies": chosen.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "redis_lock": {
                "ttl_ms": args.redis_lock_ttl_ms, "backoff_ms": args.redis_backoff_ms,
                "backoff_max_ms": args.redis_backoff_max_ms, "wait_ms": args.redis_lock_wait_ms,
            },
        },
        "elapsed_s": started.elapsed().as_secs_f64(),
        "summary": rows,
        "ratios": ratios,
        "cells": cells.iter().map(cell::Cell::json).collect::<Vec<_>>(),
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
