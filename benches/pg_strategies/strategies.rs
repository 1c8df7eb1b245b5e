//! The strategies (a)-(d) (and the negative control), and the instances of a
//! cell that run them; (e) is in [`crate::redis_lock`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use pointlock_core::{Amount, PointError, PointService, Policy, UserId};
use pointlock_server::clock::SystemClock;
use pointlock_store::{PostgresOptions, PostgresStore};

use crate::database::{describe, now_millis, pool};
use crate::redis_lock::RedisLock;
use crate::{Args, Strategy};

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

pub(crate) type DynError = Box<dyn std::error::Error + Send + Sync>;

/// What one charge came to.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub acked: bool,
    /// Conditional writes refused (optimistic: version misses; redis-lock:
    /// refused acquisitions).
    pub retries: u64,
    pub gave_up: bool,
    pub error: Option<String>,
    /// redis-lock: the lock had expired (or was taken over) before its release.
    pub lock_expired: bool,
}

impl Outcome {
    pub fn ok(retries: u64) -> Self {
        Self {
            acked: true,
            retries,
            ..Self::default()
        }
    }

    pub fn failed(error: impl fmt::Display) -> Self {
        Self {
            error: Some(error.to_string()),
            ..Self::default()
        }
    }
}

/// The instances of one cell.
pub(crate) enum Instances {
    Pointlock(Vec<Arc<PointService<PostgresStore>>>),
    Pooled(Strategy, Vec<Pool>),
    /// (e): each instance's pool and its Redis connection.
    RedisLocked(Vec<(Pool, RedisLock)>),
}

#[derive(Clone, Copy)]
pub(crate) struct Ctx {
    pub policy: Policy,
    pub optimistic_attempts: u32,
}

impl Instances {
    pub async fn open(strategy: Strategy, url: &str, n: usize, args: &Args) -> Self {
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
                services.push(Arc::new(unconditional_if(strategy, service)));
            }
            Self::Pointlock(services)
        } else if strategy == Strategy::RedisLock {
            let redis = args.redis_url.as_deref().expect("checked: a Redis URL");
            let mut instances = Vec::new();
            for _ in 0..n {
                let lock = RedisLock::connect(redis, args)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to Redis at {redis}: {e}"));
                instances.push((pool(url, args), lock));
            }
            Self::RedisLocked(instances)
        } else {
            Self::Pooled(strategy, (0..n).map(|_| pool(url, args)).collect())
        }
    }

    /// Commits refused by the store's condition, summed over the instances
    /// (pointlock; the others count their retries per charge).
    pub fn service_conflicts(&self) -> u64 {
        match self {
            Self::Pointlock(v) => v.iter().map(|s| s.commit_conflicts()).sum(),
            Self::Pooled(..) | Self::RedisLocked(..) => 0,
        }
    }

    pub async fn charge(&self, instance: usize, user: i64, amount: i64, ctx: Ctx) -> Outcome {
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
                    Strategy::Pointlock | Strategy::Unconditional | Strategy::RedisLock => {
                        unreachable!()
                    }
                };
                result.unwrap_or_else(|e| Outcome::failed(describe(&e)))
            }
            Self::RedisLocked(instances) => {
                let (pool, lock) = &instances[instance];
                lock.around(user, || pessimistic(pool, user, amount, ctx, false))
                    .await
            }
        }
    }
}

/// The negative control: the service with its store's condition switched off.
#[cfg(feature = "test-util")]
fn unconditional_if(
    strategy: Strategy,
    service: PointService<PostgresStore>,
) -> PointService<PostgresStore> {
    if strategy == Strategy::Unconditional {
        service.without_commit_condition()
    } else {
        service
    }
}

/// Without `test-util` there is no negative control (`main` refuses the strategy).
#[cfg(not(feature = "test-util"))]
fn unconditional_if(
    _strategy: Strategy,
    service: PointService<PostgresStore>,
) -> PointService<PostgresStore> {
    service
}

/// (b) `BEGIN; SELECT … FOR UPDATE; UPDATE; INSERT; COMMIT` (or the UPDATE and
/// INSERT as one CTE), the policy in Rust between the read and the write.
pub(crate) async fn pessimistic(
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
