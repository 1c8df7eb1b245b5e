//! One measured cell: a strategy × a load × a number of instances, once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pointlock_core::Policy;
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::cpu::{CpuProbe, CpuTime};
use crate::database::{reset, verify, wait_backends_gone, Check};
use crate::strategies::{Ctx, Instances};
use crate::{redis_lock, Args, Load, Routing, Strategy, HOT_USER};

/// Which cell.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    pub strategy: Strategy,
    pub load: Load,
    pub instances: usize,
    pub round: usize,
}

#[derive(Debug)]
pub(crate) struct Cell {
    pub strategy: Strategy,
    pub load: Load,
    pub instances: usize,
    pub round: usize,
    pub wall: Duration,
    pub acked: u64,
    pub retries: u64,
    pub gave_up: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// redis-lock: locks found expired (or taken over) at their release.
    pub lock_expired: u64,
    pub check: Check,
    pub pg_cpu: Option<CpuTime>,
    pub own_cpu: CpuTime,
    /// redis-lock: the Redis server's CPU (with `--redis-pid`).
    pub redis_cpu: Option<CpuTime>,
    pub p50: Duration,
    pub p99: Duration,
}

impl Cell {
    pub fn throughput(&self) -> f64 {
        self.acked as f64 / self.wall.as_secs_f64()
    }

    pub fn json(&self) -> Value {
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
            "lock_expired": self.lock_expired,
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
            "redis_cpu_ms": self.redis_cpu.map(|c| c.sched * 1e3),
            "redis_cpu_ticks_ms": self.redis_cpu.map(|c| c.ticks * 1e3),
            "p50_ms": self.p50.as_secs_f64() * 1e3,
            "p99_ms": self.p99.as_secs_f64() * 1e3,
        })
    }

    /// The progress line printed after each cell.
    pub fn line(&self) -> String {
        let redis = match self.redis_cpu {
            Some(c) => format!(" redis cpu {:.0} ms", c.sched * 1e3),
            None => String::new(),
        };
        let expired = if self.lock_expired > 0 {
            format!(" locks expired {}", self.lock_expired)
        } else {
            String::new()
        };
        format!(
            "round {} {:>6} x{} {:<16} {:>8.1} ms {:>7.0}/s retries {:>6} gave up {:>3} errors {:>3} lost {} phantom {} hist≠ {} pg cpu {} ms{redis}{expired}",
            self.round,
            self.load,
            self.instances,
            self.strategy,
            self.wall.as_secs_f64() * 1e3,
            self.throughput(),
            self.retries,
            self.gave_up,
            self.errors,
            self.check.lost,
            self.check.phantom,
            self.check.history_mismatch,
            self.pg_cpu.map_or("-".into(), |c| format!(
                "{:.0} (ticks {:.0})",
                c.sched * 1e3,
                c.ticks * 1e3
            )),
        )
    }
}

/// Reset the strategy's tables, open and warm its instances, run the measured
/// charges, check the result.
pub(crate) async fn run(
    admin: &tokio_postgres::Client,
    control: &tokio_postgres::Client,
    db_url: &str,
    spec: Spec,
    args: &Args,
    probe: &CpuProbe,
) -> Cell {
    let Spec {
        strategy,
        load,
        instances: n,
        round,
    } = spec;
    let warm_per_instance = args.pool_size as i64;
    let warm_users = warm_per_instance * n as i64;
    let first_warm_user = args.users.max(HOT_USER) + 1;
    reset(admin, control, args, warm_users).await;
    if strategy == Strategy::RedisLock {
        let url = args.redis_url.as_deref().expect("checked: a Redis URL");
        let left = redis_lock::clear(url)
            .await
            .unwrap_or_else(|e| panic!("cannot clear the locks in Redis at {url}: {e}"));
        if left > 0 {
            eprintln!("note: {left} Redis lock(s) left by the previous cell deleted");
        }
    }
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
    let redis_before = probe.redis();
    barrier.wait().await;
    let start = Instant::now();
    let mut outcomes = Vec::with_capacity(args.requests);
    for task in tasks {
        outcomes.push(task.await.expect("charge task"));
    }
    let wall = start.elapsed();
    let pg_after = probe.postgres();
    let own_after = probe.own();
    let redis_after = probe.redis();

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
        lock_expired: 0,
        check: Check::default(),
        pg_cpu: pg_before.zip(pg_after).map(|(b, a)| a - b),
        own_cpu: own_after - own_before,
        redis_cpu: if strategy == Strategy::RedisLock {
            redis_before.zip(redis_after).map(|(b, a)| a - b)
        } else {
            None
        },
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
        if outcome.lock_expired {
            cell.lock_expired += 1;
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
