//! (e) The distributed lock of the course's seeds, for comparison: a Redis lock
//! per user around (b)'s pessimistic write.
//!
//! Acquire: `SET lock:<user> <token> NX PX <ttl>`; refused, sleep a randomized
//! back-off (from `--redis-backoff-ms`, doubled per refusal up to
//! `--redis-backoff-max-ms`; each sleep drawn between half and all of it) and
//! try again, until acquired or `--redis-lock-wait-ms` has passed (then the
//! charge gives up, nothing written). Release: a Lua script that deletes the key
//! only if it still holds this holder's token (`EVAL`), so a holder whose lock
//! expired never releases its successor's. The lock is a courtesy here: the
//! write inside it is (b)'s `SELECT … FOR UPDATE` transaction, exact on its own;
//! the lock decides who may start it.
//!
//! Each instance has one multiplexed connection (every charge of the instance
//! pipelines its commands on it), as one server process would have one Redis
//! client.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;

use crate::database::describe;
use crate::strategies::{DynError, Outcome};
use crate::Args;

/// Compare-and-delete: 1 if this holder's lock was deleted, 0 if the key had
/// expired or belongs to another holder.
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
        return redis.call('del', KEYS[1]) \
    else \
        return 0 \
    end";

/// The key of a user's lock.
fn key(user: i64) -> String {
    format!("lock:{user}")
}

/// A random token prefix per instance (fastrand has no global generator here:
/// its `std` feature is off in this workspace).
fn random_prefix() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    fastrand::Rng::with_seed(nanos ^ u64::from(std::process::id())).u64(..)
}

/// One instance's Redis lock client.
pub(crate) struct RedisLock {
    connection: MultiplexedConnection,
    ttl_ms: u64,
    backoff: Duration,
    backoff_max: Duration,
    wait: Duration,
    /// Tokens are `PREFIX:N`: the prefix is random per instance, N counts.
    prefix: u64,
    next: AtomicU64,
}

impl RedisLock {
    pub async fn connect(url: &str, args: &Args) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let connection = client.get_multiplexed_async_connection().await?;
        Ok(Self {
            connection,
            ttl_ms: args.redis_lock_ttl_ms,
            backoff: Duration::from_millis(args.redis_backoff_ms),
            backoff_max: Duration::from_millis(args.redis_backoff_max_ms),
            wait: Duration::from_millis(args.redis_lock_wait_ms),
            prefix: random_prefix(),
            next: AtomicU64::new(0),
        })
    }

    /// Run `write` holding the user's lock. The outcome's retries are the
    /// refused acquisitions (plus the write's own).
    pub async fn around<F, Fut>(&self, user: i64, write: F) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Outcome, DynError>>,
    {
        let key = key(user);
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let token = format!("{:x}:{n}", self.prefix);
        let mut rng = fastrand::Rng::with_seed(self.prefix ^ n);
        let mut connection = self.connection.clone();
        let deadline = Instant::now() + self.wait;
        let mut backoff = self.backoff;
        let mut refused = 0;
        loop {
            let set: Option<String> = match redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl_ms)
                .query_async(&mut connection)
                .await
            {
                Ok(set) => set,
                Err(e) => {
                    let mut outcome = Outcome::failed(format!("redis SET NX: {e}"));
                    outcome.retries = refused;
                    return outcome;
                }
            };
            if set.is_some() {
                break;
            }
            refused += 1;
            if Instant::now() >= deadline {
                return Outcome {
                    retries: refused,
                    gave_up: true,
                    ..Outcome::default()
                };
            }
            let half = backoff / 2;
            let sleep = half + half.mul_f64(rng.f64());
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(self.backoff_max);
        }

        let written = write().await;
        let released: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&key)
            .arg(&token)
            .query_async(&mut connection)
            .await;
        let mut outcome = written.unwrap_or_else(|e| Outcome::failed(describe(&e)));
        outcome.retries += refused;
        match released {
            Ok(1) => {}
            Ok(_) => outcome.lock_expired = true,
            // The write's outcome stands (committed or not); the failed release
            // is an error of the charge all the same.
            Err(e) => {
                if outcome.error.is_none() {
                    outcome.error = Some(format!("redis release: {e}"));
                }
            }
        }
        outcome
    }
}

/// Delete every `lock:*` key (left by a holder that failed to release): each
/// cell starts with no lock held.
pub(crate) async fn clear(url: &str) -> redis::RedisResult<usize> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("lock:*")
        .query_async(&mut connection)
        .await?;
    for chunk in keys.chunks(1_000) {
        redis::cmd("DEL")
            .arg(chunk)
            .query_async::<i64>(&mut connection)
            .await?;
    }
    Ok(keys.len())
}
